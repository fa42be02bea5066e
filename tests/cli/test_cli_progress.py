"""Progress of `submit --wait`, `wait` and `batch` as a user sees it: on an 80-column pseudo-terminal the bars fit
(no line wider than 80 visible columns, so nothing wraps or scrolls); without a terminal, plain lines, one per
change. Also `--out`'s layout (a folder per job) and the batch contact sheet (input column, axis headers, links)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.cli.conftest import CliFarm, run_in_terminal, run_piped, screen_lines, visible_width, write_picture

LONG_TASK_ID = "a-rather-long-task-id-that-names-the-customer-the-shot-and-the-take-0042"


@pytest.mark.parametrize("columns", [80, 50])
def test_submit_wait_on_a_terminal_draws_a_bar_that_fits(cli_farm: CliFarm, tmp_path: Path, columns: int) -> None:
    image = write_picture(tmp_path / "cat.png")
    code, output = run_in_terminal(
        ["submit", str(image), "--prompt", "a cat", "--set", "steps=20", "--task-id", f"{LONG_TASK_ID}-{columns}",
         "--wait", "--url", cli_farm.url],
        tmp_path,
        columns,
    )  # fmt: skip
    lines = screen_lines(output)
    assert code == 0, output
    assert lines[-1].startswith(f"{LONG_TASK_ID}-{columns}  succeeded"), lines  # the summary, after the bar
    bar = lines[1:-1]  # between "submitted ..." and the summary
    assert any("━" in line for line in bar), lines  # rich's bar was drawn
    assert max(visible_width(line) for line in bar) <= columns, "\n".join(lines)
    assert any("succeeded" in line for line in bar), lines


def test_batch_on_an_80_column_terminal_draws_a_bar_that_fits(cli_farm: CliFarm, tmp_path: Path) -> None:
    manifest = _grid_manifest(tmp_path)
    code, output = run_in_terminal(["batch", str(manifest), "--out", str(tmp_path / "out"), "--url", cli_farm.url],
                                   tmp_path)  # fmt: skip
    lines = screen_lines(output)
    assert code == 0, output
    bars = [line for line in lines if "━" in line]
    assert bars, lines
    assert max(visible_width(line) for line in bars) <= 80, "\n".join(lines)
    assert bars[-1].startswith("4/4 "), lines
    assert "done 4 · running 0 · queued 0 · failed 0" in bars[-1], lines


def test_without_a_terminal_wait_writes_one_line_per_change(cli_farm: CliFarm, tmp_path: Path) -> None:
    image = write_picture(tmp_path / "cat.png")
    submitted = run_piped(["submit", str(image), "--set", "steps=20", "--url", cli_farm.url, "--json"], tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["task_id"]
    done = run_piped(["wait", task_id, "--url", cli_farm.url], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "\x1b" not in done.stderr  # no escape sequences in a log
    lines = done.stderr.splitlines()
    assert lines, done.stderr
    assert all(line.startswith(task_id) for line in lines), lines
    assert len(lines) == len(set(lines)), lines  # a line only when something changed
    assert lines[-1] == f"{task_id}  succeeded", lines
    assert done.stdout.startswith(f"{task_id}  succeeded")


def test_without_a_terminal_batch_writes_plain_lines(cli_farm: CliFarm, tmp_path: Path) -> None:
    manifest = _grid_manifest(tmp_path)
    done = run_piped(["batch", str(manifest), "--out", str(tmp_path / "out"), "--url", cli_farm.url], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "\x1b" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if re.match(r"\d+/4 · ", line)]
    assert progress, done.stderr
    assert progress[-1].startswith("4/4 · done 4"), progress
    assert all(len(line) <= 80 for line in progress), progress


def test_out_puts_each_job_in_its_own_folder(cli_farm: CliFarm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for task_id, colour in (("first", (255, 0, 0)), ("second", (0, 0, 255))):
        image = write_picture(tmp_path / f"{task_id}.png", colour)
        done = run_piped(["submit", str(image), "--task-id", task_id, "--out", str(out), "--url", cli_farm.url],
                         tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert str(out / task_id / "result-0.png") in done.stdout
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png")) == [
        "first/result-0.png",
        "second/result-0.png",
    ]
    # `download` writes the same layout.
    again = run_piped(["download", "first", "--out", str(tmp_path / "again"), "--url", cli_farm.url], tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "first" / "result-0.png").read_bytes() == (out / "first" / "result-0.png").read_bytes()


def test_the_contact_sheet_of_a_two_axis_grid(cli_farm: CliFarm, tmp_path: Path) -> None:
    manifest = _grid_manifest(tmp_path)
    out = tmp_path / "out"
    done = run_piped(["batch", str(manifest), "--out", str(out), "--url", cli_farm.url], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    items = results["items"]
    assert len(items) == 4
    for item in items:
        # `image` in the grid's defaults is the input picture, copied next to the sheet.
        assert item["inputs"]["image"] is not None
        assert (out / item["inputs"]["image"]).is_file()
    assert [item["axes"] for item in items] == [
        {"seed": "1", "sampler_name": "Euler a"},
        {"seed": "1", "sampler_name": "DPM++ 2M"},
        {"seed": "2", "sampler_name": "Euler a"},
        {"seed": "2", "sampler_name": "DPM++ 2M"},
    ]
    sheet = (out / "index.html").read_text()
    # The X/Y layout: seeds head the rows, samplers the columns.
    xy = sheet[sheet.index('<table class="xy">') : sheet.index("</table>")]
    assert re.findall(r'<th scope="col">([^<]*)</th>', xy) == ["Euler a", "DPM++ 2M"]
    assert re.findall(r'<th scope="row">([^<]*)</th>', xy) == ["1", "2"]
    # The item table: a column per axis, and the input column filled.
    table = sheet[sheet.index("<h2>Every item</h2>") :]
    assert re.findall(r'<th scope="col">([^<]*)</th>', table) == ["seed", "sampler_name"]
    assert table.count('alt="input"') == 4
    for item in items:
        assert f'href="{cli_farm.url}/ui/jobs/{item["task_id"]}"' in sheet


def _grid_manifest(folder: Path) -> Path:
    write_picture(folder / "pictures" / "fox.png")
    manifest = folder / "grid.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "defaults": {"image": "pictures/fox.png", "prompt": "a fox", "steps": 8},
                "grid": {"mode": "product", "axes": {"seed": [1, 2], "sampler_name": ["Euler a", "DPM++ 2M"]}},
            },
            sort_keys=False,  # the axes' order is the grid's: seed varies slowest
        )
    )
    return manifest
