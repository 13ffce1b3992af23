import remote_synth


def test_all_matches_the_public_namespace() -> None:
    public = sorted(n for n in vars(remote_synth) if not n.startswith("_"))
    assert sorted(remote_synth.__all__) == [n for n in public if n not in {"demo"}]


def test_exceptions_form_one_tree() -> None:
    errors = [
        getattr(remote_synth, n) for n in remote_synth.__all__ if n.endswith("Error") and n != "BackendStateError"
    ]
    assert all(issubclass(e, remote_synth.RemoteSynthError) for e in errors)
    assert not issubclass(remote_synth.BackendStateError, remote_synth.RemoteSynthError)
    assert issubclass(remote_synth.ConfigError, ValueError)
    assert issubclass(remote_synth.GenerationError, RuntimeError)
