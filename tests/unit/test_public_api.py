import remote_synth
import remote_synth.nss


def test_all_matches_the_public_namespace() -> None:
    public = sorted(n for n in vars(remote_synth) if not n.startswith("_"))
    assert sorted(remote_synth.__all__) == [n for n in public if n not in {"demo", "nss"}]


def test_the_surface_is_small_and_sorted() -> None:
    """Backend, settings, parameters, results and errors; the rest lives in its layer."""
    assert remote_synth.__all__ == sorted(remote_synth.__all__)
    assert len(remote_synth.__all__) <= 24


def test_nss_exports_what_it_names() -> None:
    public = sorted(n for n in vars(remote_synth.nss) if not n.startswith("_"))
    modules = {"batch", "contract", "inputs", "params", "processors", "prompt", "records", "results", "rundir"}
    modules |= {"flexible", "schema", "structured", "timeseries", "upstream"}
    assert sorted(remote_synth.nss.__all__) == [n for n in public if n not in modules]


def test_exceptions_form_one_tree() -> None:
    errors = [
        getattr(remote_synth, n) for n in remote_synth.__all__ if n.endswith("Error") and n != "BackendStateError"
    ]
    assert all(issubclass(e, remote_synth.RemoteSynthError) for e in errors)
    assert not issubclass(remote_synth.BackendStateError, remote_synth.RemoteSynthError)
    assert issubclass(remote_synth.ConfigError, ValueError)
    assert issubclass(remote_synth.GenerationError, RuntimeError)
