"""Textual-inversion embeddings (docs/engine.md "Textual-inversion embeddings"): every file format, names and
hashes, the torch-free reader against the torch loader, the folder and its rescans, the matching rule, the limits
(P5) and the warnings (P12)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.embeddings import MAX_VECTORS, EmbeddingFormatError, read_embedding_info, text_encoder_width
from shared.embeddings.folder import embedding_files
from shared.embeddings.torch_pickle import TensorShape, read_torch_structure
from shared.embeddings.widths import TINY_TEXT_WIDTH
from shared.prompts import EmbeddingTooLong
from tests.embedding_files import (
    FakeTokenizer,
    json_document,
    vectors,
    webui_dict,
    write_hidden_png,
    write_safetensors,
    write_text_chunk_png,
    write_torch,
)
from worker.engine.embeddings import (
    EmbeddingDatabase,
    for_model,
    load_embedding_file,
    model_tokenize,
    model_width,
    ti_hashes,
)
from worker.engine.models import LoadedModel

WIDTH = 8


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Formats


def every_format(folder: Path) -> dict[str, tuple[Path, torch.Tensor, dict[str, Any]]]:
    """One file per accepted layout and container: (path, the vectors it must load as, expected metadata)."""
    v3, v1, v2 = vectors(3, WIDTH, 1), vectors(1, WIDTH, 2), vectors(2, WIDTH, 3)
    meta = {"step": 500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "v1-5-pruned"}
    none = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    param_dict = webui_dict(v2)
    param_dict["string_to_param"] = torch.nn.ParameterDict({"*": torch.nn.Parameter(v2.clone())})
    return {
        "webui-pt": (write_torch(folder / "webui.pt", webui_dict(v3)), v3, meta),
        "webui-bin": (write_torch(folder / "Upper.Case.BIN", webui_dict(v1)), v1, meta),
        "parameter-dict": (write_torch(folder / "old.pt", param_dict), v2, meta),
        "diffusers-1d": (write_torch(folder / "concept.bin", {"<cat-toy>": v1[0].clone()}), v1, none),
        "emb-params": (write_torch(folder / "kohya.pt", {"emb_params": v3.clone()}), v3, none),
        "safetensors": (write_safetensors(folder / "st.safetensors", {"emb_params": v2}), v2, none),
        "text-chunk": (
            write_text_chunk_png(folder / "chunk.png", json_document(v2, "named-in-json")),
            v2,
            {"step": 7, "sd_checkpoint": None, "sd_checkpoint_name": None},
        ),
        "hidden": (
            write_hidden_png(folder / "hidden.png", json_document(v3, "hidden-name")),
            v3,
            {"step": 7, "sd_checkpoint": None, "sd_checkpoint_name": None},
        ),
    }


EXPECTED_NAMES = {
    "webui-pt": "webui",
    "webui-bin": "Upper.Case",  # the name is the file name without its last extension, case kept
    "parameter-dict": "old",
    "diffusers-1d": "concept",  # the tensor's key is ignored
    "emb-params": "kohya",
    "safetensors": "st",
    "text-chunk": "named-in-json",  # an image's JSON document names it
    "hidden": "hidden-name",
}


def test_every_format_loads_with_its_name_vectors_metadata_and_hash(tmp_path: Path) -> None:
    for kind, (path, vec, meta) in every_format(tmp_path).items():
        embedding = load_embedding_file(path)
        assert embedding is not None, kind
        assert embedding.name == EXPECTED_NAMES[kind], kind
        assert embedding.vec.dtype == torch.float32
        # JSON carries the numbers as decimal text of float32 values: they come back exactly.
        assert torch.equal(embedding.vec, vec), kind
        assert (embedding.vectors, embedding.width, embedding.shape) == (vec.shape[0], WIDTH, WIDTH), kind
        assert {k: getattr(embedding, k) for k in meta} == meta, kind
        assert embedding.hash == sha256(path), kind
        assert embedding.shorthash == sha256(path)[:12], kind


def test_sdxl_layout_is_both_encoders_side_by_side(tmp_path: Path) -> None:
    clip_l, clip_g = vectors(2, 768, 4), vectors(2, 1280, 5)
    for path in (
        write_safetensors(tmp_path / "xl.safetensors", {"clip_l": clip_l, "clip_g": clip_g}),
        write_torch(tmp_path / "xl.pt", {"clip_g": clip_g, "clip_l": clip_l}),
    ):
        embedding = load_embedding_file(path)
        assert embedding is not None
        assert (embedding.width, embedding.vectors) == (2048, 2)
        assert torch.equal(embedding.parts["clip_l"], clip_l)
        assert torch.equal(embedding.parts["clip_g"], clip_g)
        assert torch.equal(embedding.vec, torch.cat([clip_l, clip_g], dim=1))
        info = read_embedding_info(path)
        assert info is not None
        assert (info.width, info.vectors) == (2048, 2)


def malformed_files(folder: Path) -> dict[str, Path]:
    v = vectors(2, WIDTH)
    two_terms = webui_dict(v)
    two_terms["string_to_param"]["#"] = torch.nn.Parameter(v.clone())
    return {
        "two terms": write_torch(folder / "two.pt", two_terms),
        "two tensors": write_safetensors(folder / "two.safetensors", {"a": v, "b": v.clone()}),
        # The single-tensor rule wants a plain dict of a plain tensor, as the reference's type checks do.
        "ordered dict": write_torch(folder / "ordered.pt", OrderedDict(emb=v)),
        "parameter value": write_torch(folder / "param.pt", {"emb": torch.nn.Parameter(v)}),
        "a bare tensor": write_torch(folder / "bare.pt", v),
        "3-D string_to_param": write_torch(folder / "cube.pt", webui_dict(v.reshape(1, 2, WIDTH))),
        "SDXL rows differ": write_safetensors(
            folder / "xl.safetensors", {"clip_l": vectors(2, 768), "clip_g": vectors(3, 1280)}
        ),
        "not torch": _write_bytes(folder / "junk.pt", b"this is not a torch file"),
        "not safetensors": _write_bytes(folder / "junk.safetensors", b"\xff" * 16),
    }


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_malformed_files_are_refused_by_both_readers(tmp_path: Path) -> None:
    for what, path in malformed_files(tmp_path).items():
        with pytest.raises(Exception) as torch_error:  # noqa: PT011 - each reader raises its own kind
            load_embedding_file(path)
        with pytest.raises(Exception) as free_error:  # noqa: PT011
            read_embedding_info(path)
        assert torch_error.value is not None, what
        assert free_error.value is not None, what
    with pytest.raises(EmbeddingFormatError, match="2 terms"):
        read_embedding_info(tmp_path / "two.pt")


def test_the_torch_free_reader_agrees_with_the_torch_loader(tmp_path: Path) -> None:
    for kind, (path, _, _) in every_format(tmp_path).items():
        loaded = load_embedding_file(path)
        info = read_embedding_info(path)
        assert loaded is not None, kind
        assert info is not None, kind
        assert info.listing_entry() == loaded.listing_entry(), kind
        assert info.name == loaded.name, kind


def test_the_restricted_unpickler_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": Exploit()}}, path)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        read_torch_structure(path)
    with pytest.raises(pickle.UnpicklingError):
        load_embedding_file(path)  # torch's weights-only loader refuses it too
    assert not marker.exists()


def test_legacy_torch_files_are_read_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(webui_dict(vectors(4, WIDTH)), path, _use_new_zipfile_serialization=False)
    structure = read_torch_structure(path)
    assert structure["string_to_param"]["*"] == TensorShape((4, WIDTH), parameter=True)
    assert structure["step"] == 500
    loaded = load_embedding_file(path)
    info = read_embedding_info(path)
    assert loaded is not None
    assert info is not None
    assert info.listing_entry() == loaded.listing_entry()


def test_an_image_without_embedding_data_is_a_preview(tmp_path: Path) -> None:
    from tests.embedding_files import picture

    path = tmp_path / "just-a-picture.png"
    picture().save(path)
    assert load_embedding_file(path) is None
    assert read_embedding_info(path) is None


# ---------------------------------------------------------------------------------------------------------------
# The folder


def test_the_folder_walk_order_and_what_it_skips(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    v = vectors(1, WIDTH)
    write_torch(folder / "b.pt", webui_dict(v))
    write_torch(folder / "a.PT", webui_dict(v))
    write_torch(folder / "sub" / "deeper" / "c.bin", webui_dict(v))
    write_torch(folder / "sub" / "0.pt", webui_dict(v))
    write_text_chunk_png(folder / "x.preview.png", json_document(v, "preview"))  # previews are never embeddings
    (folder / "empty.pt").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored")
    (folder / "loop").symlink_to(folder)  # followed, but a folder is walked once
    (tmp_path / "outside").mkdir()
    write_torch(tmp_path / "outside" / "linked.pt", webui_dict(v))
    (folder / "zz-link").symlink_to(tmp_path / "outside")
    relative = [p.relative_to(folder).as_posix() for p in embedding_files(folder)]
    assert relative == ["a.PT", "b.pt", "sub/0.pt", "sub/deeper/c.bin", "zz-link/linked.pt"]


def database(folder: Path, tokenizer: FakeTokenizer | None = None, width: int = WIDTH) -> EmbeddingDatabase:
    return EmbeddingDatabase(folder, tokenize=tokenizer or FakeTokenizer(), width=width)


def test_width_decides_loaded_or_skipped_and_a_later_file_replaces_an_earlier(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_torch(folder / "same.pt", webui_dict(vectors(1, WIDTH, 1)))
    write_torch(folder / "sub" / "same.pt", webui_dict(vectors(2, WIDTH, 2)))  # walked later: replaces
    write_torch(folder / "wide.pt", webui_dict(vectors(1, 768)))
    write_torch(folder / "broken.pt", {"string_to_param": {}})
    db = database(folder)
    assert list(db.loaded) == ["same"]
    assert db.loaded["same"].vectors == 2
    assert list(db.skipped) == ["wide"]
    assert "broken.pt" in db.errors
    listing = db.listing()
    assert listing["loaded"] == {
        "same": {
            "step": 500,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "v1-5-pruned",
            "shape": 8,
            "vectors": 2,
        }
    }
    assert listing["skipped"]["wide"]["shape"] == 768


def test_rescan_sees_changes_at_any_depth_and_rereads_only_changed_files(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_torch(folder / "top.pt", webui_dict(vectors(1, WIDTH)))
    db = database(folder)
    assert db.refresh() is False  # nothing changed
    write_torch(folder / "a" / "b" / "deep.pt", webui_dict(vectors(1, WIDTH)))  # the top folder's mtime stays
    assert db.refresh() is True
    assert set(db.loaded) == {"top", "deep"}
    top = db.loaded["top"]
    write_torch(folder / "a" / "b" / "deep.pt", webui_dict(vectors(3, WIDTH)))  # replaced in place
    assert db.refresh() is True
    assert db.loaded["deep"].vectors == 3
    assert db.loaded["top"] is top  # not read again
    shutil.rmtree(folder / "a")
    assert db.refresh() is True
    assert set(db.loaded) == {"top"}
    assert db.refresh(force=True) is True
    assert db.loaded["top"] is not top


def test_no_folder_means_no_embeddings(tmp_path: Path) -> None:
    db = EmbeddingDatabase(None, tokenize=FakeTokenizer(), width=WIDTH)
    assert db.loaded == {}
    assert db.find_embedding_at_position([1, 2], 0) == (None, None)
    assert database(tmp_path / "missing").loaded == {}


# ---------------------------------------------------------------------------------------------------------------
# Matching


def test_matching_is_by_token_ids_longest_first_at_each_offset(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    for name in ("style", "style-two", "style-two-extra", "Neg", "two"):
        write_torch(folder / f"{name}.pt", webui_dict(vectors(1, WIDTH)))
    tok = FakeTokenizer()
    db = database(folder, tok)
    tokens = tok("a STYLE-two-extra and style-two then style - two neg two")
    found = {}
    for offset in range(len(tokens)):
        embedding, length = db.find_embedding_at_position(tokens, offset)
        if embedding is not None:
            found[offset] = (embedding.name, length)
    words = tok.words("a STYLE-two-extra and style-two then style - two neg two")
    assert words[1:6] == ["style", "-", "two", "-", "extra"]
    assert found == {
        1: ("style-two-extra", 5),  # the longest candidate under "style" wins
        3: ("two", 1),  # any offset is tried (the chunker skips the matched tokens itself)
        7: ("style-two", 3),
        9: ("two", 1),
        11: ("style-two", 3),  # BPE-like: "style - two" is the same token sequence as "style-two"
        13: ("two", 1),
        14: ("Neg", 1),  # case-insensitive through the tokenizer
        15: ("two", 1),
    }


def test_names_that_tokenise_alike_match_the_one_registered_first(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_torch(folder / "EasyNegative.pt", webui_dict(vectors(1, WIDTH, 1)))
    write_torch(folder / "sub" / "easynegative.pt", webui_dict(vectors(2, WIDTH, 2)))
    tok = FakeTokenizer()
    db = database(folder, tok)
    assert set(db.loaded) == {"EasyNegative", "easynegative"}
    embedding, length = db.find_embedding_at_position(tok("easyNEGATIVE"), 0)
    assert embedding is not None
    assert (embedding.name, length) == ("EasyNegative", 1)


def test_an_embedding_of_more_than_75_vectors_is_listed_as_skipped_and_refused_in_a_prompt(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_torch(folder / "huge.pt", webui_dict(vectors(MAX_VECTORS + 1, WIDTH)))
    write_torch(folder / "full.pt", webui_dict(vectors(MAX_VECTORS, WIDTH)))
    tok = FakeTokenizer()
    db = database(folder, tok)
    assert list(db.loaded) == ["full"]
    listing = db.listing()
    assert listing["skipped"]["huge"]["vectors"] == 76
    assert "76 vectors" in listing["errors"]["huge"]
    assert db.find_embedding_at_position(tok("full"), 0)[1] == 1
    with pytest.raises(EmbeddingTooLong, match="76 vectors") as refused:
        db.find_embedding_at_position(tok("a huge cat"), 1)
    assert refused.value.name == "huge"


def test_a_skipped_embedding_used_in_a_prompt_gives_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    write_torch(folder / "sd2-style.pt", webui_dict(vectors(1, 1024)))
    write_torch(folder / "usable.pt", webui_dict(vectors(1, WIDTH)))
    write_torch(folder / "wide-usable.pt", webui_dict(vectors(1, 1024)))
    tok = FakeTokenizer()
    db = database(folder, tok)
    segments = [tok("a cat, sd2-style"), tok("usable and SD2 - style again")]
    warnings = db.incompatible_warnings(segments, field="negative_prompt")
    assert [w.code for w in warnings] == ["embedding_incompatible"]  # once, though used twice
    assert "'sd2-style'" in warnings[0].message
    assert "width 1024" in warnings[0].message
    assert f"takes {WIDTH}" in warnings[0].message
    assert warnings[0].message.startswith("negative_prompt:")
    # Skipped names are found where the chunker would read text; a usable name never warns.
    assert db.incompatible_embeddings(tok("usable")) == []
    assert [e.name for e in db.incompatible_embeddings(tok("wide-usable"))] == ["wide-usable"]
    assert db.incompatible_warnings([tok("nothing here")]) == []


def test_ti_hashes_names_each_embedding_once_with_12_hex_digits(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    a = write_torch(folder / "a,b:c.pt", webui_dict(vectors(1, WIDTH, 1)))
    d = write_torch(folder / "d.pt", webui_dict(vectors(1, WIDTH, 2)))
    db = database(folder)
    first, second = db.loaded["a,b:c"], db.loaded["d"]
    assert ti_hashes([first, second, first]) == f"abc: {sha256(a)[:12]}, d: {sha256(d)[:12]}"
    assert ti_hashes([]) is None


# ---------------------------------------------------------------------------------------------------------------
# The real model's tokenizer and width


def test_the_database_of_a_loaded_model(tiny_model: LoadedModel, tmp_path: Path) -> None:
    width = model_width(tiny_model)
    assert width == TINY_TEXT_WIDTH["tiny"] == text_encoder_width("tiny", None)
    write_torch(tmp_path / "embeddings" / "MyStyle.pt", webui_dict(vectors(2, width)))
    db = for_model(tiny_model, tmp_path)
    tokenize = model_tokenize(tiny_model)
    tokens = list(tokenize("a mystyle cat"))
    start = len(tokenize("a "))
    embedding, length = db.find_embedding_at_position(tokens, start)
    assert embedding is not None
    assert embedding.name == "MyStyle"
    assert length == len(tokenize("mystyle"))
    assert for_model(tiny_model, None).loaded == {}


def test_a_render_places_the_embedding_writes_ti_hashes_and_warns_of_other_widths(
    tiny_model: LoadedModel, tmp_path: Path
) -> None:
    from tests.engine.conftest import PROMPT, make_picture, pixels
    from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images

    folder = tmp_path / "embeddings"
    folder.mkdir()
    width = model_width(tiny_model)
    placed = write_torch(folder / "zq.pt", webui_dict(vectors(2, width, seed=3) * 20))
    write_torch(folder / "xw.pt", webui_dict(vectors(1, width + 8)))
    db = for_model(tiny_model, tmp_path)

    def render(prompt: str, embeddings: EmbeddingDatabase | None) -> tuple[Any, str, list[str]]:
        p = StableDiffusionProcessingImg2Img(
            sd_model=tiny_model, prompt=prompt, init_images=[make_picture()], width=64, height=64, steps=4, seed=5
        )
        p.embeddings = embeddings
        processed = process_images(p)
        return processed.images[0], processed.infotexts[0], [w.code for w in processed.warnings]

    with_embedding, infotext, codes = render(f"{PROMPT} zq xw", db)
    as_text, plain_infotext, plain_codes = render(f"{PROMPT} zq xw", None)
    assert abs(pixels(with_embedding) - pixels(as_text)).max() > 0  # the vectors replaced the letters z, q
    digest = hashlib.sha256(placed.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "zq: {digest}"' in infotext
    assert "TI hashes" not in plain_infotext
    assert codes == ["embedding_incompatible"]  # xw has another width: encoded as its letters, and said so
    assert plain_codes == []
