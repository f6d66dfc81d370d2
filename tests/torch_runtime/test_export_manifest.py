"""Checked exports: manifest.json holds every file's SHA-256, and each loader checks it first."""

import json
import shutil

import pytest
from conversion.loaders import load_export

from f1_common.export_layout import MANIFEST_FILE, ExportIntegrityError, verify_manifest
from f1_torch.loader import LoadError, load_model


def _copy(export, tmp_path) -> str:
    directory = tmp_path / "copy"
    shutil.copytree(export.directory, directory)
    return str(directory)


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_the_manifest_lists_every_file(tiny_export):
    with open(f"{tiny_export.directory}/{MANIFEST_FILE}") as f:
        listed = set(json.load(f)["sha256"])
    assert {"model.safetensors", "config.json", "norm_stats.json", "tokenizer.model"} <= listed
    assert verify_manifest(tiny_export.directory)


@pytest.mark.parametrize("name", ["model.safetensors", "norm_stats.json"])
def test_a_flipped_byte_is_named_by_both_runtimes(tiny_export, tmp_path, name):
    directory = _copy(tiny_export, tmp_path)
    _flip_byte(f"{directory}/{name}", offset=40 if name.endswith(".json") else 4096)
    with pytest.raises(ExportIntegrityError, match=name):
        load_model(directory)
    with pytest.raises(ExportIntegrityError, match=name):
        load_export(directory)


def test_a_damaged_header_without_a_manifest_is_our_error(tiny_export, tmp_path):
    directory = _copy(tiny_export, tmp_path)
    (tmp_path / "copy" / MANIFEST_FILE).unlink()
    _flip_byte(f"{directory}/model.safetensors", offset=3)  # the header length
    with pytest.raises(LoadError, match="not a readable safetensors file"):
        load_model(directory)
