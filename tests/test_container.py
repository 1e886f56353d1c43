"""icefall_container.def cannot be built here; parse it and check that it really installs anyphone."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    parsers = pytest.importorskip("spython.main.parse.parsers")
    recipes = parsers.SingularityParser(str(ROOT / "icefall_container.def")).recipe
    assert len(recipes) == 1, f"expected one stage, got {list(recipes)}"
    return next(iter(recipes.values()))


def test_base_image_is_cuda_pytorch():
    recipe = _recipe()
    assert recipe.fromHeader.startswith("pytorch/pytorch:"), recipe.fromHeader
    assert "cuda" in recipe.fromHeader


def test_copies_package_and_recipes_into_image():
    recipe = _recipe()
    sources = {line.split()[0] for line in recipe.files}
    for needed in ("pyproject.toml", "anyphone", "local", "zipformer_crctc", "zipformer_transducer", "prepare.sh"):
        assert needed in sources, f"%files does not copy {needed}"
        assert (ROOT / needed).exists(), f"%files names {needed}, which is missing from the repository"


def test_post_installs_anyphone_and_not_torchaudio():
    recipe = _recipe()
    commands = [c for c in recipe.install if not c.lstrip().startswith("#")]
    installs = [c for c in commands if "pip install" in c]
    assert any("/opt/anyphone" in c for c in installs), installs
    assert not any("torchaudio" in c for c in installs), "torchaudio beside torch breaks lhotse"
    assert any("import anyphone" in c for c in commands), "the build should smoke-test the import"
