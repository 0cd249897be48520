"""Workers: run one benchmark cell on the engine and return a plain record.

`CellWorker` (worker.py) is a plain class that works in-process; `actor.py` wraps it as a Ray
actor. Ray is imported only in actor.py; torch only inside the functions that need it.
"""
