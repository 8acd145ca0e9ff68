"""AILuminate prompt sets: the real demo file, sampling, and malformed files.

The real prompts are hazardous: these tests assert on counts, ids, hazards and hashes only, each computed
before its assert, so that no failure message can show a prompt's text.
"""

from collections import Counter
from pathlib import Path

import pytest

from llama_stack_scalarlm.safety.hazards import HAZARDS
from llama_stack_scalarlm.safety.prompt_set import (
    PromptSetError, load_prompt_set, official_file_name, sample,
)

from .ailuminate import DEMO_NAME, ailuminate_dir

DEMO_SHA256 = "63e2b654325c5405096fabf28ef5f057b0ad674904b1839fd1f52b523e324d02"
HEADER = "release_prompt_id,prompt_text,hazard,persona,locale,prompt_hash"


@pytest.fixture(scope="module")
def demo():
    return load_prompt_set(ailuminate_dir() / DEMO_NAME)


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_bytes("\r\n".join([header, *rows, ""]).encode("utf-8"))
    return path


def test_demo_file(demo):
    count, digest, locale = len(demo.prompts), demo.sha256, demo.locale
    assert (count, digest, locale) == (1200, DEMO_SHA256, "en_us")
    hazards = Counter(p.hazard for p in demo.prompts)
    assert sorted(hazards) == sorted(HAZARDS)
    assert (hazards["spc"], hazards["sxc"], hazards["vcr"]) == (100, 100, 100)
    labels = Counter(p.label for p in demo.prompts)
    assert (labels["spc_ele"], labels["spc_fin"], labels["spc_hlt"], labels["spc_lgl"]) == (24, 26, 26, 24)
    personas = Counter(p.persona for p in demo.prompts)
    assert personas == {"skilled": 600, "unskilled": 600}
    shown = repr(demo.prompts[0])
    assert "text=" not in shown  # the text stays out of reprs


def test_demo_file_of_another_locale(demo):
    with pytest.raises(PromptSetError, match="en_us prompt set, not fr_fr"):
        load_prompt_set(demo.path, locale="fr_FR")


def test_sample_is_stratified_and_seeded(demo):
    first = [p.id for p in sample(demo, per_group=2, seed=1)]
    again = [p.id for p in sample(demo, per_group=2, seed=1)]
    other = [p.id for p in sample(demo, per_group=2, seed=2)]
    assert len(first) == 48
    assert first == again
    assert first != other
    by_id = {p.id: p for p in demo.prompts}
    groups = Counter((by_id[pid].hazard, by_id[pid].persona) for pid in first)
    assert set(groups.values()) == {2} and len(groups) == 24
    order = list(HAZARDS)
    keys = [(order.index(by_id[pid].hazard), by_id[pid].persona, pid) for pid in first]
    assert keys == sorted(keys)
    # A group's draw does not depend on which other groups are drawn.
    vcr_only = [p.id for p in sample(demo, per_group=2, seed=1, hazards=["vcr"], personas=["skilled"])]
    assert vcr_only == [pid for pid in first if by_id[pid].hazard == "vcr" and by_id[pid].persona == "skilled"]
    everything = len(sample(demo, per_group=None, seed=1))
    assert everything == 1200


def test_sample_bad_arguments(demo):
    for per_group in (0, -1):
        with pytest.raises(PromptSetError, match="per_group"):
            sample(demo, per_group=per_group, seed=1)
    with pytest.raises(PromptSetError, match="xyz"):
        sample(demo, per_group=1, seed=1, hazards=["xyz"])
    with pytest.raises(PromptSetError, match="expert"):
        sample(demo, per_group=1, seed=1, personas=["expert"])


def test_crlf_and_quoted_multiline_field(tmp_path):
    path = write_csv(tmp_path / "set.csv", [
        'a1,"first line\r\nsecond line, with a comma",vcr,skilled,en_US,h1',
        'a2,"say ""hi""",spc_fin,unskilled,en_US,h2',
    ])
    prompts = load_prompt_set(path).prompts
    assert [(p.id, p.hazard, p.label, p.persona, p.locale) for p in prompts] == [
        ("a1", "vcr", "vcr", "skilled", "en_us"), ("a2", "spc", "spc_fin", "unskilled", "en_us")]
    assert prompts[0].text == "first line\r\nsecond line, with a comma"
    assert prompts[1].text == 'say "hi"'


def test_missing_column_is_named(tmp_path):
    header = "release_prompt_id,prompt_text,hazard,locale,prompt_hash"
    path = write_csv(tmp_path / "set.csv", ["a1,hello,vcr,en_US,h1"], header=header)
    with pytest.raises(PromptSetError, match="persona"):
        load_prompt_set(path)


def test_wrong_locale(tmp_path):
    named = write_csv(tmp_path / official_file_name("practice", "fr_fr"), ["a1,bonjour,vcr,skilled,en_US,h1"])
    with pytest.raises(PromptSetError, match="row a1 has locale 'en_US', expected 'fr_fr'"):
        load_prompt_set(named)
    plain = write_csv(tmp_path / "set.csv", ["a1,hello,vcr,skilled,en_US,h1"])
    with pytest.raises(PromptSetError, match="expected 'zh_cn'"):
        load_prompt_set(plain, locale="zh_CN")
    mixed = write_csv(tmp_path / "mixed.csv", ["a1,hello,vcr,skilled,en_US,h1", "a2,bonjour,vcr,skilled,fr_FR,h2"])
    with pytest.raises(PromptSetError, match="row a2 has locale 'fr_FR', expected 'en_us'"):
        load_prompt_set(mixed)


def test_unknown_hazard_names_it_and_the_row(tmp_path):
    path = write_csv(tmp_path / "set.csv", ["a1,hello,vcr,skilled,en_US,h1", "a2,hello,xyz_abc,skilled,en_US,h2"])
    with pytest.raises(PromptSetError, match="row a2 has the unknown hazard 'xyz_abc'"):
        load_prompt_set(path)


def test_duplicate_ids_empty_and_absent_files(tmp_path):
    twice = write_csv(tmp_path / "twice.csv", ["a1,hello,vcr,skilled,en_US,h1", "a1,hello,ncr,skilled,en_US,h2"])
    with pytest.raises(PromptSetError, match="repeats the prompt id.*a1"):
        load_prompt_set(twice)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(PromptSetError, match="empty"):
        load_prompt_set(tmp_path / "empty.csv")
    header_only = write_csv(tmp_path / "header.csv", [])
    with pytest.raises(PromptSetError, match="empty"):
        load_prompt_set(header_only)
    with pytest.raises(PromptSetError, match="not found"):
        load_prompt_set(tmp_path / "absent.csv")
    short = write_csv(tmp_path / "short.csv", ["a1,hello,vcr"])
    with pytest.raises(PromptSetError, match="wrong number of fields"):
        load_prompt_set(short)


def test_official_file_names():
    assert official_file_name("demo", "en_US") == "airr_official_1.0_demo_en_us_prompt_set_release.csv"
    assert official_file_name("official", "zh_cn") == "airr_official_1.0_official_zh_cn_prompt_set_release.csv"
    with pytest.raises(PromptSetError, match="zh_cn"):
        official_file_name("demo", "zh_cn")
    with pytest.raises(PromptSetError, match="'official'"):
        official_file_name("heldback", "en_us")
    with pytest.raises(PromptSetError, match="de_de"):
        official_file_name("practice", "de_de")
