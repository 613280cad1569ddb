"""Every `scanlens` command explains itself with --help; `models` and `schema --check` work offline."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from scanlens.app.cli import app

runner = CliRunner()


@pytest.mark.parametrize("argv,words", [
    ([], "recognition imaging"),
    (["serve"], "SCANLENS_"),
    (["models"], "model cards"),
    (["status"], "running service"),
    (["schema"], "JSON Schema"),
    (["recover"], "journals"),
    (["demo"], "ground truth"),
    (["sim"], "Simulated instruments"),
    (["sim", "eels"], "heterostructure"),
    (["train"], "eels"),
    (["train", "eels"], "held-out"),
    (["sim", "bepfm"], "M. lysodeikticus"),
    (["train", "bepfm"], "held-out"),
    (["train", "eels-fit"], "least squares"),
    (["train", "loops"], "random-field Ising"),
    (["train", "stem"], "U-Net"),
    (["sim", "stem"], "HAADF STEM movie"),
    (["keys"], "CurveZMQ key pairs"),
    (["keys", "create"], "never overwritten"),
    (["keys", "list"], "z85 public key"),
])
def test_help(argv, words):
    result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert words in " ".join(result.output.split())


def test_models_lists_the_committed_recognizer():
    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "eels-mlp" in result.output and "5–124.5 eV" in result.output and "phase_accuracy" in result.output


def test_schema_check_passes_on_the_committed_schema():
    result = runner.invoke(app, ["schema", "--check"])
    assert result.exit_code == 0 and "up to date" in result.output


def test_status_without_a_service_is_a_clear_error():
    result = runner.invoke(app, ["status", "--control", "tcp://127.0.0.1:1", "--timeout", "0.3"])
    assert result.exit_code == 1 and "is `scanlens serve` running?" in result.output


def test_impossible_stem_movie_is_a_clear_error():
    # 50 defects, 3 lattice constants apart, cannot fit in a 128 px frame: refused before any socket opens
    result = runner.invoke(app, ["sim", "stem", "--size", "128", "--defects", "50", "--quiet"])
    assert result.exit_code == 2
    assert "could not place 50 defects" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("argv,fragment", [
    (["serve", "--log-level", "LOUD"], "is not one of DEBUG, INFO, WARNING, ERROR"),
    (["sim", "eels", "--dwell-us", "-5"], "greater than or equal to 0"),
    (["sim", "stem", "--frame-ms", "-1"], "greater than or equal to 0"),
    (["demo", "--dwell-us", "-1"], "greater than or equal to 0"),
])
def test_invalid_options_are_refused_before_anything_starts(argv, fragment):
    result = runner.invoke(app, argv, terminal_width=200)
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # rich draws the error in a box
    assert fragment in words and "Traceback" not in result.output


def test_status_with_a_malformed_endpoint_is_one_clear_line():
    result = runner.invoke(app, ["status", "--control", "foo"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: cannot connect to 'foo': Invalid argument (addr='foo')"]


def test_demo_with_a_recognizer_of_another_modality_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["demo", "--modality", "bepfm", "--recognizer", "eels-mlp", "--json",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "error: demo failed: scan demo-bepfm-0 rejected: recognizer 'eels-mlp' is for modality 'eels'" \
        in result.output
    assert "Traceback" not in result.output and "ExceptionGroup" not in result.output


def test_demo_with_an_unknown_or_unscorable_recognizer_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["demo", "--modality", "haadf", "--recognizer", "nope", "--frames", "2",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "recognizers ['nope'] not found" in line and "available: [" in line and "'stem-unet'" in line
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["demo", "--recognizer", "pca", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --recognizer pca: the built-in PCA has no classes or parameters to score; it runs next to the "
        "recognizer with --pca (the default)"]
