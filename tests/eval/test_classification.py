"""classification_metrics / evaluate_classifier against hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from kft.eval.classification import classification_metrics, evaluate_classifier

NAMES = ["a", "b", "c", "d", "e"]
# Class "d" occurs neither in the truth nor in the predictions; "e" is predicted once, never true.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 2, 2, 4])


def _logits_for(predictions, num_classes):
    logits = np.zeros((len(predictions), num_classes), np.float32)
    logits[np.arange(len(predictions)), predictions] = 3.0
    return logits


def test_hand_computed_metrics():
    m = classification_metrics(Y_TRUE, _logits_for(Y_PRED, 5), NAMES)
    assert m["num_examples"] == 7
    assert m["accuracy"] == pytest.approx(4 / 7)
    # Hand-computed per class (tp, fp, fn): a (2,0,1), b (1,1,1), c (1,1,1), e (0,1,0).
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["e"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    assert m["per_class"]["d"]["support"] == 0
    # sklearn f1_score(Y_TRUE, Y_PRED, average="macro") averages over labels {0, 1, 2, 4}:
    # (0.8 + 0.5 + 0.5 + 0.0) / 4 = 0.45 (including "d" would give 0.36).
    assert m["macro_f1"] == pytest.approx(0.45)
    assert m["confusion_matrix"] == [
        [2, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert "top5_accuracy" not in m and "top_k" not in m  # 5 classes: always 1.0, not shown


def test_one_hot_labels_give_the_same_result():
    one_hot = np.eye(5, dtype=np.float32)[Y_TRUE]
    logits = _logits_for(Y_PRED, 5)
    assert classification_metrics(one_hot, logits, NAMES) == classification_metrics(
        Y_TRUE, logits, NAMES)


def test_top5_with_seven_classes_counts_boundary_ties_as_hits():
    logits = np.array([[6, 5, 4, 3, 2, 1, 0],   # true 4: four better -> inside top 5
                       [6, 5, 4, 3, 2, 1, 0],   # true 5: five better -> outside
                       [1, 1, 1, 1, 1, 1, 1]],  # true 6: all tied -> inside
                      np.float32)
    m = classification_metrics([4, 5, 6], logits, list("abcdefg"))
    assert m["top_k"] == 5
    assert m["top5_accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy"] == 0.0  # argmax takes the first of tied maxima (class 0)


def test_top5_is_not_reported_for_five_classes_or_fewer():
    logits = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], np.float32)
    m = classification_metrics([0, 2], logits, ["x", "y", "z"])
    assert "top5_accuracy" not in m and "top_k" not in m
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0
    six = classification_metrics([0], np.arange(6, dtype=np.float32)[None], list("abcdef"))
    assert six["top_k"] == 5 and six["top5_accuracy"] == 0.0  # class 0 is sixth


def test_perfect_predictions():
    m = classification_metrics([0, 1, 2, 1], _logits_for([0, 1, 2, 1], 3), ["x", "y", "z"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


@pytest.mark.parametrize("labels,logits,names,message", [
    ([0, 1], np.zeros((3, 2)), ["a", "b"], "2 labels for 3 rows"),
    ([0, 2], np.zeros((2, 2)), ["a", "b"], "labels must be in 0..1"),
    ([0, 1], np.zeros((2, 3)), ["a", "b"], r"shape \[N, 2\]"),
    ([0, 1], np.array([[0.0, np.nan], [1.0, 0.0]]), ["a", "b"], "NaN"),
    ([], np.zeros((0, 2)), ["a", "b"], "no examples"),
    ([0, 1], np.zeros((2, 2)), ["a", "a"], "unique"),
    ([0.5, 1], np.zeros((2, 2)), ["a", "b"], "non-integer"),
])
def test_bad_inputs_raise_clear_errors(labels, logits, names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.asarray(labels), logits, names)


def test_evaluate_classifier_iterates_all_batches_including_remainder():
    rng = np.random.default_rng(0)
    labels = np.arange(10) % 3
    images = rng.uniform(0, 50, (10, 4, 4, 3)).astype(np.float32)
    images[np.arange(10), :, :, labels] += 200.0
    one_hot = np.eye(3, dtype=np.float32)[labels]
    dataset = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4)
    calls = []

    def predict_fn(x):
        calls.append(int(x.shape[0]))
        return tf.reduce_mean(x, axis=[1, 2]).numpy()  # channel means as logits

    m = evaluate_classifier(predict_fn, dataset, ["r", "g", "b"])
    assert calls == [4, 4, 2]
    assert m["num_examples"] == 10
    expected = classification_metrics(labels, images.mean(axis=(1, 2)), ["r", "g", "b"])
    assert m == expected
    assert m["accuracy"] == 1.0


def test_evaluate_classifier_rejects_unlabelled_dataset():
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((2, 4, 4, 3), np.float32)).batch(2)
    with pytest.raises(ValueError, match="images, labels"):
        evaluate_classifier(lambda x: np.zeros((2, 3)), dataset, ["a", "b", "c"])
