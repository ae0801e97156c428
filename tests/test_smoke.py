from instrumented import InstrumentedSource

from headwater import RatePolicy, State


def test_ok_none_raise(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=2), aliases=("alpha_dl",))
    engine = make_engine({"alpha": src})
    ids = [engine.submit("alpha_dl", t) for t in ("ok:a", "none", "raise")]
    recs = engine.wait(ids, timeout=10)
    assert [r.state for r in recs] == [State.COMPLETED, State.FAILED, State.FAILED]
    assert "declined" in recs[1].error
    assert "RuntimeError" in recs[2].error
    assert recs[0].source == "alpha"
