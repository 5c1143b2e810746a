"""The fixed classifier, the quality metrics on known cases, and ``dcgan evaluate``."""

import json
import shutil

import pytest
import torch

from dcgan import layout
from dcgan.classifier import (
    WEIGHTS_PATH,
    WEIGHTS_SHA256,
    EvaluatorError,
    accuracy,
    load_classifier,
    sha256,
)
from dcgan.data import load_mnist, to_model_range
from dcgan.features import MIN_SAMPLES
from dcgan.quality import QualityError, QualityMeter

from .conftest import one_line_error, run_cli


@pytest.fixture(scope="module")
def test_set(data_dir):
    images, labels = load_mnist(data_dir, train=False)
    return to_model_range(images), labels


@pytest.fixture(scope="module")
def meter(test_set):
    return QualityMeter(load_classifier(), test_set[0])


def test_packaged_classifier_is_the_documented_one():
    assert sha256(WEIGHTS_PATH) == WEIGHTS_SHA256
    assert WEIGHTS_PATH.stat().st_size < 2_000_000


def test_classifier_accuracy_on_the_mnist_test_set(test_set):
    assert accuracy(load_classifier(), *test_set) >= 0.985


def test_reference_statistics_are_cached_and_a_bad_cache_is_recomputed(tmp_path, test_set):
    clf, real, fake = load_classifier(), test_set[0][:1000], test_set[0][5000:5300]
    expected = QualityMeter(clf, real).measure(fake).fid
    QualityMeter(clf, real, cache=tmp_path)
    (cached,) = tmp_path.glob("fid-reference-*.pt")
    written = cached.stat().st_mtime_ns
    assert QualityMeter(clf, real, cache=tmp_path).measure(fake).fid == expected
    assert cached.stat().st_mtime_ns == written  # read, not recomputed
    cached.write_bytes(b"not a tensor file")
    assert QualityMeter(clf, real, cache=tmp_path).measure(fake).fid == expected
    assert torch.load(cached, weights_only=True)["real_features_num_samples"] == 1000
    QualityMeter(clf, real[:900], cache=tmp_path)  # other reference images, other file
    assert len(list(tmp_path.glob("fid-reference-*.pt"))) == 2


def test_identical_sets_have_zero_fid(meter, test_set):
    q = meter.measure(test_set[0])
    assert q.fid == pytest.approx(0.0, abs=1e-3)
    assert q.classes_covered == 10 and q.largest_class_fraction < 0.15
    assert 9.0 < q.inception_score <= 10.0


def test_one_repeated_digit_covers_one_class(meter, test_set):
    images, labels = test_set
    one = images[labels == 3][:1].repeat(500, 1, 1, 1)
    q = meter.measure(one)
    assert q.classes_covered == 1 and q.largest_class_fraction == 1.0
    assert q.class_fractions[3] == 1.0
    assert q.inception_score == pytest.approx(1.0, abs=1e-3)
    assert q.fid > 100


def test_two_balanced_digits_score_about_two(meter, test_set):
    images, labels = test_set
    two = torch.cat([images[labels == 0][:400], images[labels == 1][:400]])
    q = meter.measure(two)
    assert q.classes_covered == 2
    assert q.inception_score == pytest.approx(2.0, abs=0.15)


def test_noise_is_far_from_real(meter):
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert meter.measure(noise).fid > 500


def test_too_few_samples(meter, test_set):
    with pytest.raises(QualityError, match="too few"):
        meter.measure(test_set[0][:MIN_SAMPLES - 1])


def test_measuring_leaves_the_global_rng_alone(meter, test_set):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    meter.measure(test_set[0][:300])
    assert torch.equal(torch.rand(3), expected)


def test_corrupt_or_missing_classifier_weights(tmp_path):
    with pytest.raises(EvaluatorError, match="missing"):
        load_classifier(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(EvaluatorError, match="unreadable or of the wrong shape"):
        load_classifier(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EvaluatorError, match="wrong shape"):
        load_classifier(wrong)


def test_packaged_weights_are_checksummed(tmp_path, monkeypatch):
    import dcgan.classifier as classifier

    copy = tmp_path / "copy.pt"
    shutil.copy(WEIGHTS_PATH, copy)
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(classifier, "WEIGHTS_PATH", copy)
    with pytest.raises(EvaluatorError, match="corrupt: SHA-256"):
        classifier.load_classifier()


def test_evaluate_cli_on_a_trained_run(finished_run, tmp_path):
    gen = finished_run.out / layout.GENERATOR_FINAL
    proc = run_cli(["evaluate", "--generator", str(gen), "--n", "300",
                    "--json", str(tmp_path / "q.json")])
    assert proc.returncode == 0, proc.stderr
    assert "FID" in proc.stdout and "Inception Score" in proc.stdout
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["n"] == 300 and q["classifier"] == "mnist-cnn-v1"
    assert 1.0 <= q["inception_score"] <= 10.0 and len(q["class_fractions"]) == 10


def test_evaluate_reference_floor(tmp_path):
    proc = run_cli(["evaluate", "--reference", "real", "--n", "2000",
                    "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stderr
    q = json.loads((tmp_path / "r.json").read_text())
    assert q["fid"] < 20 and q["classes_covered"] == 10


@pytest.mark.parametrize("args, code, needle", [
    (["--n", "100"], 2, "too small"),
    (["--classifier", "/nonexistent.pt"], 1, "missing"),
    (["--generator-wrong"], 2, "unrecognized"),
])
def test_evaluate_bad_input(finished_run, args, code, needle):
    gen = finished_run.out / layout.GENERATOR_FINAL
    proc = run_cli(["evaluate", "--generator", str(gen), *args])
    assert proc.returncode == code
    assert needle in one_line_error(proc)


def test_evaluate_wrong_generator(finished_run):
    disc = finished_run.out / layout.DISCRIMINATOR_FINAL
    proc = run_cli(["evaluate", "--generator", str(disc)])
    assert proc.returncode == 1 and "Generator" in one_line_error(proc)


def test_training_records_quality(finished_run):
    import pyarrow.parquet as pq

    out, stdout = finished_run.out, finished_run.proc.stdout
    rows = pq.read_table(out / layout.EVAL_FILE).to_pylist()
    # Every epoch (the end is the last epoch), G and its moving average from the same noise.
    assert [(r["step"], r["generator"]) for r in rows] == [
        (8, "raw"), (8, "ema"), (16, "raw"), (16, "ema")]
    assert all(r["n"] == 200 and r["fid"] > 0 for r in rows)
    assert "quality of G (200 samples): FID" in stdout
    assert "quality of EMA G (200 samples): FID" in stdout
    assert "Sample quality (step 16, 200 samples" in stdout
    info = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert info["quality"]["step"] == 16 and len(info["evaluations"]) == 4
    # The best generator of the run: the lowest FID of any row, named by the report.
    best = json.loads((out / layout.BEST_INFO).read_text())
    lowest = min(rows, key=lambda r: r["fid"])
    assert (best["step"], best["generator"], best["fid"]) == (
        lowest["step"], lowest["generator"], lowest["fid"])
    assert f"Best generator: {out / 'dcgan_generator_best.pth'}" in stdout
    assert (out / layout.QUALITY_FILE).stat().st_size > 10_000  # FID/IS by step and time
    for name in (layout.BEST_GENERATOR, layout.GENERATOR_EMA_FINAL):
        assert run_cli(["sample", "--generator", str(out / name), "--n", "16",
                        "--image", str(out.parent / f"{name}.png")]).returncode == 0


def test_classifier_train_never_writes_over_the_packaged_weights(tmp_path):
    from dcgan.classifier import WEIGHTS_PATH

    before = WEIGHTS_PATH.read_bytes()
    proc = run_cli(["classifier", "train", "--weights", str(WEIGHTS_PATH), "--epochs", "1"])
    assert proc.returncode == 2
    assert "is the packaged classifier" in one_line_error(proc)
    assert WEIGHTS_PATH.read_bytes() == before


def test_scores_with_other_weights_name_them(tmp_path, data_dir):
    import shutil

    from dcgan.classifier import WEIGHTS_PATH

    other = tmp_path / "other.pt"
    shutil.copy(WEIGHTS_PATH, other)
    proc = run_cli(["evaluate", "--reference", "noise", "--n", "200", "--data-dir", data_dir,
                    "--classifier", str(other)])
    assert proc.returncode == 0, proc.stderr
    assert f"classifier {other} (unchecked weights, not mnist-cnn-v1)" in proc.stdout
