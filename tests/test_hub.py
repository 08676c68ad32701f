"""--push_to_hub goes through the Trainer's own Hub path; the Hub is replaced by a recorder here (offline)."""

from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

from segtune.cli import main


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records repositories made and folders uploaded."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, run_as_future=False, **kwargs):
        folder = Path(folder_path)
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
        self.uploads.append(dict(repo_id=repo_id, folder=folder, files=files, card=card, **kwargs))
        if run_as_future:
            done = Future()
            done.set_result(None)
            return done
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


def test_push_to_hub_uploads_the_model_folder_with_segtunes_card(monkeypatch, demo_dataset, tiny_model_dir,
                                                                  tmp_path):
    import transformers.trainer

    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "run"
    code = main(["train", "--data", str(demo_dataset), "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--reduce-labels", "--base-size", "64", "--crop-size", "48", "--max_steps", "4", "--eval_steps", "4",
                 "--num-workers", "0", "--disable_tqdm", "true", "--push_to_hub", "--hub_model_id", "me/tiny-demo"])
    assert code == 0
    assert hub.repos == ["me/tiny-demo"]
    # The checkpoint's push during training (hub_strategy every_save), then exactly one final upload:
    # no "Model save" push of a half-written folder from segtune's own save_model.
    assert [u["commit_message"] for u in hub.uploads] == ["Training in progress, step 4", "End of training"]
    final = hub.uploads[-1]
    assert final["repo_id"] == "me/tiny-demo" and final["folder"] == out
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "labels.json",
            "metrics.json", "splits.json", "report.html"} <= final["files"]
    assert "checkpoint-*" in " ".join(final["ignore_patterns"])
    assert "| 7 | rock |" in final["card"] and "non-commercial" in final["card"]  # segtune's card, not the generic one
    assert "mean IoU: **" in final["card"] and str(tmp_path) not in final["card"]
    assert final["card"] == (out / "README.md").read_text()


def test_push_to_hub_at_the_end_only_uploads_once(monkeypatch, demo_dataset, tiny_model_dir, tmp_path):
    import transformers.trainer

    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "run"
    code = main(["train", "--data", str(demo_dataset), "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--reduce-labels", "--base-size", "64", "--crop-size", "48", "--max_steps", "2", "--eval_steps", "2",
                 "--num-workers", "0", "--disable_tqdm", "true", "--no-report", "--push_to_hub", "--hub_model_id",
                 "me/tiny-demo", "--hub_strategy", "end"])
    assert code == 0
    assert len(hub.uploads) == 1
    (upload,) = hub.uploads
    assert upload["commit_message"] == "End of training" and "README.md" in upload["files"]
    assert "| recipe | `segformer` |" in upload["card"]
