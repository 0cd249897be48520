"""Progress displays: one plain line per event when not on a terminal, a redrawn bar (with the
cell running on each worker) on one; log lines written during the bar stay intact."""

from __future__ import annotations

import io
import logging

import pytest

from orchestrator.run.progress import BarProgress, LineProgress, NoProgress, duration, make_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def progress_log():
    """What the orchestrator.run.progress logger writes, as text."""
    logger = logging.getLogger("orchestrator.run.progress")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    old_level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def ok(worker: int = 0, **extra) -> dict:
    return {
        "status": "ok",
        "worker_index": worker,
        "decode_tok_s": 1234.5,
        "ttft_ms": 2.5,
        "cell_wall_s": 1.5,
        **extra,
    }


def events(progress) -> None:
    progress.begin(total=4, skipped=1, to_run=3)
    progress.started(0, "cached b=1")
    progress.started(1, "naive b=1")
    progress.finished(ok(0), "cached b=1", final=True)
    progress.finished(
        {
            "status": "error",
            "worker_index": 1,
            "error": "worker died: x; retrying (1 of 3 tries used)",
        },
        "naive b=1",
        final=False,
    )
    progress.started(1, "naive b=1")
    progress.finished(
        {"status": "oom", "worker_index": 1, "error": "out of memory"}, "naive b=1", final=True
    )
    progress.finished({"status": "skipped_oom", "error": "not run"}, "naive b=8", final=True)
    progress.end()


def test_lines_when_not_a_terminal(progress_log):
    progress = make_progress("auto", stream=io.StringIO())
    assert isinstance(progress, LineProgress)
    events(progress)
    lines = progress_log.getvalue().splitlines()
    assert len(lines) == 5  # one per finished attempt, one at the end (starts are debug)
    assert lines[0].startswith("[1/3] ok") and "decode 1,234.5 tok/s, TTFT 2.50 ms" in lines[0]
    assert "(worker 0, 1.5s) | 1 ok, 0 failed, ETA " in lines[0]
    assert lines[1].startswith("[1/3] error") and "retrying" in lines[1]  # not counted as done
    assert lines[2].startswith("[2/3] oom") and "1 ok, 1 failed, ETA" in lines[2]
    assert lines[3].startswith("[3/3] skipped_oom") and lines[3].endswith("1 ok, 2 failed")
    assert lines[4].startswith("3/3 cells run in ") and lines[4].endswith(": 1 ok, 2 failed")
    assert "\r" not in progress_log.getvalue() and "\x1b" not in progress_log.getvalue()


def test_bar_on_a_terminal(progress_log):
    term = Terminal()
    progress = make_progress("auto", stream=term)
    assert isinstance(progress, BarProgress)
    other = logging.getLogger("orchestrator")
    handler = logging.StreamHandler(term)
    other.addHandler(handler)
    try:
        progress.begin(total=4, skipped=1, to_run=3)
        progress.started(0, "cached b=1 p=32")
        progress.started(1, "naive b=1 p=32")
        bar = progress.lines(200)
        assert bar[0].startswith("[------------------------] 0/3 cells | 0 ok, 0 failed, ETA ?")
        assert "1 skipped (already ok)" in bar[0]
        assert bar[1:] == ["  worker 0: cached b=1 p=32 (0s)", "  worker 1: naive b=1 p=32 (0s)"]
        assert handler.stream is not term  # log lines go through the bar's stream
        logging.getLogger("orchestrator.run.dispatch").warning("a warning line")
        progress.finished(ok(0), "cached b=1 p=32", final=True)
        assert progress.lines(200)[0].startswith("[########----------------] 1/3 cells")
        assert progress.lines(200)[1:] == ["  worker 1: naive b=1 p=32 (0s)"]
        assert all(len(line) <= 29 for line in progress.lines(30))  # never wraps
        progress.end()
    finally:
        other.removeHandler(handler)
    assert handler.stream is term  # restored
    out = term.getvalue()
    assert "\r\x1b[J" in out and "\x1b[1F" in out  # the two-line bar area was cleared
    assert "\na warning line\n" in out.replace("\r\x1b[J", "\n").replace("\x1b[1F", "")
    # end() clears the bar; the closing line is a plain log line
    assert out.endswith("\r\x1b[J1/3 cells run in 0s: 1 ok, 0 failed, ETA 0s\n")


def test_modes():
    assert isinstance(make_progress("lines", stream=Terminal()), LineProgress)
    assert isinstance(make_progress("bar", stream=io.StringIO()), BarProgress)
    assert isinstance(make_progress("off", stream=Terminal()), NoProgress)
    assert [duration(s) for s in (0.4, 59, 61, 7200)] == ["0s", "59s", "1m01s", "2h00m"]


def test_eta_per_method_from_finished_cells(progress_log):
    """Naive cells take 10 s, cached ones 0.2 s: the ETA counts each remaining cell at its own
    method's pace (the old average pace over all cells would say 5 s per cell)."""
    from orchestrator.spec.grid import expand_cells
    from orchestrator.spec.job import load_job_spec

    cells = expand_cells(load_job_spec("jobs/sweep.yaml"))  # 6 naive, 6 cached
    naive = [c for c in cells if c.method == "naive"]
    cached = [c for c in cells if c.method == "cached"]
    progress = LineProgress()
    progress.begin(total=12, skipped=0, to_run=12, cells=cells)

    def finish(cell, wall, **extra):
        progress.started(0, cell.label())
        record = ok(0, cell_id=cell.cell_id, method=cell.method, cell_wall_s=wall, **extra)
        progress.finished(record, cell.label(), final=True)

    finish(cached[0], 0.2)
    # no naive cell measured yet: counted as the slowest method seen, and the ETA says ">="
    assert progress.state.estimate() == (pytest.approx(11 * 0.2), False)
    assert "ETA >=2s" in progress_log.getvalue().splitlines()[-1]
    finish(naive[0], 12.0, model_load_s=2.0)  # the model load is not the cell's pace
    seconds, complete = progress.state.estimate()
    assert complete and seconds == pytest.approx(5 * 10.0 + 5 * 0.2)
    assert progress_log.getvalue().splitlines()[-1].endswith("2 ok, 0 failed, ETA 51s")
    # a second worker halves it; a naive cell running for 4 s already counts 4 s less
    progress.started(1, naive[1].label())
    progress.state.running[1] = (naive[1].label(), progress.state.running[1][1] - 4.0)
    assert progress.state.eta() == pytest.approx((51.0 - 4.0) / 2, abs=0.1)
    progress.end()


def test_eta_without_cells_keeps_the_average_pace():
    progress = LineProgress()
    progress.begin(total=3, skipped=0, to_run=3)
    progress.finished(ok(0), "cached b=1", final=True)
    eta = progress.state.eta()
    assert eta is not None and eta == pytest.approx(progress.state.elapsed * 2, rel=0.5)


def test_eta_scales_a_method_to_sizes_not_yet_run():
    """Naive time grows with batch x sequence, cached time barely: a power law fitted per
    method predicts an unseen size (the naive cell 4x the tokens takes ~4x as long here)."""
    from orchestrator.run.eta import EtaEstimator

    def kind(method, b, p):
        return ("m", method, b, p, 32)

    est = EtaEstimator()
    for b, p, naive_s, cached_s in ((1, 32, 1.0, 0.5), (4, 32, 4.0, 0.5)):
        est.walls[kind("naive", b, p)] = [naive_s]
        est.walls[kind("cached", b, p)] = [cached_s]
    est.pending = {"x": kind("naive", 16, 32), "y": kind("cached", 16, 32)}
    seconds, complete = est.seconds_left({}, workers=1, now=0.0)
    assert complete and seconds == pytest.approx(16.0 + 0.5)
