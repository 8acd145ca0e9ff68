import pytest

from llama_stack_scalarlm.paths import UnsafeNameError, check_name, safe_join


@pytest.mark.parametrize("name", ["../etc", "a/b", "/abs", "..", ".hidden", "", "a\x00b", "x" * 200])
def test_names_from_users_never_leave_their_root(tmp_path, name):
    with pytest.raises(UnsafeNameError):
        safe_join(tmp_path, name)


def test_plain_names_stay_inside(tmp_path):
    assert safe_join(tmp_path, "SmolLM2-135M-Instruct") == (tmp_path / "SmolLM2-135M-Instruct").resolve()


def test_a_trailing_newline_is_not_part_of_a_valid_name():
    with pytest.raises(UnsafeNameError):
        check_name("ok\n")
