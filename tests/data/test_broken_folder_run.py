"""Acceptance: a folder with broken files of every kind trains to the end, each file reported."""

import json

from kft import config as cfg
from kft.run import run_recipe


def test_broken_folder_trains_to_the_end_and_reports_each_file(tmp_path, broken_files,
                                                              stray_files):
    root = tmp_path / "data"
    expected = {}
    for seed, cls in enumerate(["ants", "bees"]):
        for path, status in broken_files(root / "train" / cls, seed=seed).values():
            expected[str(path)] = status
        for path in stray_files(root / "train" / cls):
            expected[str(path)] = "skipped"
    recipe = cfg.Recipe(
        name="broken",
        data=cfg.Data(root=str(root), image_size=32, val_fraction=0.25),
        model=cfg.Model(arch="resnet_tiny"),
        train=cfg.Train(epochs=2, batch_size=4, optimizer="adam", learning_rate=1e-3),
        export=cfg.Export(quantize=("int8",), representative_samples=8),
    )
    summary = run_recipe(recipe, tmp_path / "run", verbose=0)
    assert summary["epochs_run"] == 2
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    skipped = {e["path"]: e["reason"] for e in report["skipped"]}
    converted = {e["path"]: e["reason"] for e in report["converted"]}
    for path, status in expected.items():
        if status == "skipped":
            assert path in skipped and skipped[path], path
        elif status == "converted":
            assert path in converted and converted[path], path
        else:
            assert path not in skipped and path not in converted, path
    usable = sum(status != "skipped" for status in expected.values())
    assert report["num_train"] + report["num_val"] == usable
    assert (tmp_path / "run" / "export" / "model_int8.tflite").is_file()
