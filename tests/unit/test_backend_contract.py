"""The GeneratorBackend contract and NSS's broken __subclasshook__, fixed."""

from __future__ import annotations

import pytest

from remote_synth import GeneratorBackend


class Complete(GeneratorBackend):
    def initialize(self) -> None: ...
    def prepare_params(self, **kwargs: object) -> None: ...
    def generate(self, data_actions_fn=None):  # type: ignore[no-untyped-def]
        ...
    def teardown(self) -> None: ...


def test_teardown_is_abstract() -> None:
    class NoTeardown(GeneratorBackend):
        def initialize(self) -> None: ...
        def prepare_params(self, **kwargs: object) -> None: ...
        def generate(self, data_actions_fn=None):  # type: ignore[no-untyped-def]
            ...

    with pytest.raises(TypeError, match="teardown"):
        NoTeardown()  # type: ignore[abstract]
    assert Complete().remote is False


def test_subclasshook_uses_the_real_contract() -> None:
    class Structural:
        def initialize(self) -> None: ...
        def prepare_params(self) -> None: ...
        def generate(self) -> None: ...
        def teardown(self) -> None: ...

    class NssShaped:  # what NSS's hook accepted: no teardown
        def prepare_args(self) -> None: ...
        def prepare_params(self) -> None: ...
        def load(self) -> None: ...
        def initialize(self) -> None: ...
        def generate(self) -> None: ...

    class OnlyOldNames:  # made NSS's hook raise AttributeError
        def prepare_args(self) -> None: ...
        def load(self) -> None: ...

    assert issubclass(Structural, GeneratorBackend)
    assert not issubclass(NssShaped, GeneratorBackend)
    assert not issubclass(OnlyOldNames, GeneratorBackend)
    assert issubclass(Complete, GeneratorBackend)
    assert not issubclass(Structural, Complete)  # the hook applies to the ABC only


def test_cleanup_steps_are_isolated() -> None:
    ran = []

    def boom() -> None:
        ran.append("boom")
        raise RuntimeError("first step failed")

    failures = GeneratorBackend.run_cleanup_steps([("a", boom), ("b", lambda: ran.append("b"))])
    assert ran == ["boom", "b"]
    assert [name for name, _ in failures] == ["a"]
