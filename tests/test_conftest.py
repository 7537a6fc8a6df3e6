"""The suite-wide guards of tests/conftest.py, each shown on a small pytest session of its
own: no process group survives a test, and our own packages cannot be skipped away."""
from pathlib import Path

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_process_group_does_not_leak_into_the_next_test(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_order="""
        import torch.distributed as dist
        from megatron_vdit.parallel.layout import init_distributed

        def test_leaves_a_group():
            init_distributed("gloo")
            assert dist.is_initialized()

        def test_starts_clean():
            assert not dist.is_initialized()
    """)
    pytester.runpytest_inprocess().assert_outcomes(passed=2)


def test_importorskip_of_our_packages_fails_loudly(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skips="""
        import pytest

        def test_own_package_broken():
            pytest.importorskip("megatron_vdit.no_such_module")

        def test_third_party_missing():
            pytest.importorskip("no_such_third_party_package")
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*own package failed to import*"])


def test_module_level_importorskip_of_our_packages_is_an_error(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_module_skip="""
        import pytest
        missing = pytest.importorskip("scaling_laws.no_such_module")

        def test_never_runs():
            pass
    """)
    pytester.runpytest_inprocess().assert_outcomes(errors=1)
