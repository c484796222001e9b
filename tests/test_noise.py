"""Noise models against their definitions, computed independently of mln_tf's own code."""

from decimal import Decimal

import numpy as np
import pytest

from mln_tf import noise

UNBALANCED_SIZES = (50, 37, 13, 200, 91)


def unbalanced_labels(sizes=UNBALANCED_SIZES, seed=0):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


def exact_floor(count, rate, divisor=1):
    """floor(count * rate / divisor) in decimal arithmetic, as the definitions are written."""
    return int(Decimal(count) * Decimal(str(rate)) // Decimal(divisor))


def confusion_of(clean, noisy, num_classes):
    matrix = np.zeros((num_classes, num_classes), int)
    for true, given in zip(clean, noisy, strict=True):
        matrix[true, given] += 1
    return matrix


def check_report(report, clean, noisy, num_classes):
    """The report must describe exactly what happened to the labels."""
    confusion = confusion_of(clean, noisy, num_classes)
    np.testing.assert_array_equal(report.confusion, confusion)
    rows = confusion.sum(axis=1, keepdims=True)
    expected = np.where(rows > 0, confusion / np.maximum(rows, 1), 0.0)
    np.testing.assert_allclose(report.transition_matrix, expected)
    changed = [i for i in range(len(clean)) if clean[i] != noisy[i]]
    assert report.changed_indices.tolist() == changed
    assert report.achieved_rate == pytest.approx(len(changed) / len(clean))
    assert report.num_examples == len(clean)


# Symmetric, authors' variant -------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.29, 0.4, 0.6, 0.8, 0.99])
def test_symmetric_moves_exact_counts_to_every_other_class(rate):
    labels = unbalanced_labels()
    num_classes = len(UNBALANCED_SIZES)
    noisy, report = noise.symmetric_noise(labels, rate, seed=3)
    confusion = confusion_of(labels, noisy, num_classes)
    for true, size in enumerate(UNBALANCED_SIZES):
        per_target = exact_floor(size, rate, num_classes - 1)
        for given in range(num_classes):
            expected = size - (num_classes - 1) * per_target if given == true else per_target
            assert confusion[true, given] == expected, (true, given)
    check_report(report, labels, noisy, num_classes)
    assert report.noise == "symmetric" and report.rate == rate


def test_symmetric_achieved_rate_on_balanced_data():
    labels = np.repeat(np.arange(10), 5900)
    _, report = noise.symmetric_noise(labels, 0.4, seed=0)
    # floor(5900 * 0.4 / 9) = 262 per target, 9 * 262 = 2358 of 5900 per class.
    assert report.achieved_rate == pytest.approx(2358 / 5900)


def test_symmetric_class_with_too_few_samples_stays_clean():
    labels = np.concatenate([np.zeros(3, int), np.repeat(np.arange(1, 10), 100)])
    noisy, report = noise.symmetric_noise(labels, 0.4, seed=0)
    # floor(3 * 0.4 / 9) == 0: none of class 0 moves; others move 4 to each class.
    assert np.all(noisy[:3] == 0)
    assert report.confusion[1, 0] == 4 and report.confusion[1, 1] == 64


def test_symmetric_two_classes():
    labels = np.array([0] * 10 + [1] * 20)
    noisy, report = noise.symmetric_noise(labels, 0.3, seed=0)
    assert report.confusion.tolist() == [[7, 3], [6, 14]]
    assert np.all((noisy != labels) == np.isin(np.arange(30), report.changed_indices))


def test_rounding_uses_decimal_rate():
    # In float arithmetic int(100 * 0.29) == 28; the definition means 29.
    noisy, report = noise.pair_noise(np.repeat([0, 1], 100), 0.29)
    assert report.confusion[0, 1] == 29


# Symmetric, uniform over all classes ---------------------------------------------------


def test_symmetric_uniform_matches_its_transition_matrix():
    num_classes, rate, size = 5, 0.6, 40_000
    labels = np.repeat(np.arange(num_classes), size)
    noisy, report = noise.symmetric_uniform_noise(labels, rate, seed=1)
    check_report(report, labels, noisy, num_classes)
    off_diagonal = rate / num_classes
    expected = np.full((num_classes, num_classes), off_diagonal)
    np.fill_diagonal(expected, 1 - rate + off_diagonal)
    # Binomial standard error per entry is at most sqrt(0.25 / size) = 0.0025.
    np.testing.assert_allclose(report.transition_matrix, expected, atol=0.0125)
    assert report.achieved_rate == pytest.approx(rate * (num_classes - 1) / num_classes, abs=0.01)


def test_symmetric_uniform_resamples_exactly_floor_n_r():
    labels = np.zeros(1000, int)
    # With K classes drawn uniformly, the resampled ones keep label 0 one time in K; with
    # K large almost every resampled label changes: at most floor(N r) changes.
    noisy, report = noise.symmetric_uniform_noise(labels, 0.37, num_classes=10_000, seed=0)
    assert 360 <= report.changed_indices.size <= 370


# Pair flips ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.45, 0.95])
def test_pair_flips_each_class_to_the_next(rate):
    labels = unbalanced_labels()
    num_classes = len(UNBALANCED_SIZES)
    noisy, report = noise.pair_noise(labels, rate, seed=2)
    expected = np.zeros((num_classes, num_classes), int)
    for true, size in enumerate(UNBALANCED_SIZES):
        flipped = exact_floor(size, rate)
        expected[true, (true + 1) % num_classes] = flipped
        expected[true, true] = size - flipped
    np.testing.assert_array_equal(confusion_of(labels, noisy, num_classes), expected)
    check_report(report, labels, noisy, num_classes)


def test_pair_two_classes_swaps():
    labels = np.array([0] * 10 + [1] * 10)
    _, report = noise.pair_noise(labels, 0.45)
    assert report.confusion.tolist() == [[6, 4], [4, 6]]


def test_cifar10_pairs():
    labels = np.repeat(np.arange(10), 100)
    noisy, report = noise.cifar10_pair_noise(labels, 0.4, seed=0)
    flips = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck, bird, deer, cat, dog
    expected = np.diag(np.full(10, 100))
    for source, target in flips.items():
        expected[source, source] = 60
        expected[source, target] = 40
    np.testing.assert_array_equal(report.confusion, expected)
    check_report(report, labels, noisy, 10)
    assert report.achieved_rate == pytest.approx(0.2)


def test_asymmetric_is_cifar10_pair():
    labels = np.repeat(np.arange(10), 30)
    a = noise.apply_noise(labels, "asymmetric", 0.3, seed=4)
    b = noise.cifar10_pair_noise(labels, 0.3, seed=4)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_cifar10_pairs_reject_other_class_counts():
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        noise.cifar10_pair_noise(np.array([0, 10]), 0.4)


def test_class_flip_rejects_bad_mapping():
    labels = np.repeat([0, 1, 2], 5)
    with pytest.raises(ValueError, match="two different class indices"):
        noise.class_flip_noise(labels, {0: 0}, 0.2)
    with pytest.raises(ValueError, match="two different class indices"):
        noise.class_flip_noise(labels, {0: 3}, 0.2)
    with pytest.raises(TypeError, match="Expected a mapping"):
        noise.class_flip_noise(labels, [(0, 1)], 0.2)


# Transition matrices ---------------------------------------------------------------------


def test_transition_matrix_noise_matches_the_matrix():
    matrix = np.array([[0.7, 0.3, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    labels = np.repeat(np.arange(3), 30_000)
    noisy, report = noise.transition_matrix_noise(labels, matrix, seed=0)
    check_report(report, labels, noisy, 3)
    np.testing.assert_allclose(report.transition_matrix, matrix, atol=0.012)
    # Entries of probability 0 never occur.
    assert report.confusion[0, 2] == 0 and report.confusion[2, :2].sum() == 0
    assert report.rate == pytest.approx((0.3 + 0.2 + 0.0) / 3)


def test_transition_matrix_rounding_never_reaches_a_zero_class():
    # Rows that sum to 1 - 5e-5 (within tolerance): the missing mass must not go to a
    # class of probability 0 at the end of the row.
    matrix = np.array([[0.99995, 0.0], [0.5, 0.49995]])
    labels = np.zeros(200_000, int)
    noisy, _ = noise.transition_matrix_noise(labels, matrix, seed=0)
    assert np.all(noisy == 0)


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[0.5, 0.5], [0.2, 0.7]], "row 1 sums to 0.9"),
        ([[1.2, -0.2], [0.0, 1.0]], "negative entry"),
        ([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], "square matrix"),
        ([[np.nan, 1.0], [0.0, 1.0]], "non-finite"),
    ],
)
def test_transition_matrix_must_be_row_stochastic(matrix, message):
    with pytest.raises(ValueError, match=message) as error:
        noise.transition_matrix_noise(np.array([0, 1]), matrix)
    assert "transition_matrix" in str(error.value)


def test_transition_matrix_size_must_match_labels():
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        noise.transition_matrix_noise(np.array([0, 2]), np.eye(2))


# Feature-dependent -----------------------------------------------------------------------


def test_feature_dependent_golden_many_misclassified():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.1, 0.8, 0.1],  # misclassified as 1, top-1 0.8
            [0.6, 0.3, 0.1],  # correct
            [0.5, 0.4, 0.1],  # misclassified as 0, top-1 0.5
            [0.0, 0.1, 0.9],  # misclassified as 2, top-1 0.9
            [0.1, 0.1, 0.8],  # correct
            [0.7, 0.2, 0.1],  # misclassified as 0, top-1 0.7
        ]
    )
    # n = floor(6 * 0.5) = 3 <= 4 misclassified: the three with the highest top-1 prob.
    noisy, report = noise.feature_dependent_noise(labels, probabilities, 0.5)
    assert noisy.tolist() == [1, 0, 1, 2, 2, 0]
    assert report.changed_indices.tolist() == [0, 3, 5]


def test_feature_dependent_golden_few_misclassified():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.1, 0.8, 0.1],  # misclassified as 1
            [0.6, 0.3, 0.1],  # correct, second class 1 at 0.3
            [0.2, 0.7, 0.1],  # correct, second class 0 at 0.2
            [0.05, 0.9, 0.05],  # correct, second 0 and 2 tie at 0.05: class 0
            [0.0, 0.45, 0.55],  # correct, second class 1 at 0.45
            [0.0, 0.0, 1.0],  # correct, no second class
        ]
    )
    # n = floor(6 * 0.67) = 4: the misclassified one, then 0.45 (#4), 0.3 (#1), 0.2 (#2).
    noisy, _ = noise.feature_dependent_noise(labels, probabilities, 0.67)
    assert noisy.tolist() == [1, 1, 0, 1, 1, 2]


def random_probabilities(num_examples, num_classes, seed, *, quantum=None):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_examples, num_classes)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if quantum:
        # Coarse probabilities have many exact ties.
        probabilities = np.round(probabilities / quantum) * quantum
        probabilities[:, -1] = 1 - probabilities[:, :-1].sum(axis=1)
        probabilities = np.clip(probabilities, 0, 1)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.4, 0.8, 0.99])
@pytest.mark.parametrize("quantum", [None, 0.1])
def test_feature_dependent_follows_the_definition(rate, quantum):
    num_examples, num_classes = 400, 4
    probabilities = random_probabilities(num_examples, num_classes, 0, quantum=quantum)
    # Labels agree with the argmax 70% of the time.
    rng = np.random.default_rng(1)
    labels = probabilities.argmax(axis=1)
    flip = rng.random(num_examples) < 0.3
    labels[flip] = rng.integers(0, num_classes, flip.sum())
    noisy, report = noise.feature_dependent_noise(labels, probabilities, rate, seed=0)
    check_report(report, labels, noisy, num_classes)

    expected_count = exact_floor(num_examples, rate)
    assert report.changed_indices.size == expected_count  # exactly floor(N r)
    assert np.all(noisy[report.changed_indices] != labels[report.changed_indices])

    # Independent ranking: a Python sort on (-probability, index).
    top1 = [max(range(num_classes), key=lambda c, row=row: (row[c], -c)) for row in probabilities]
    misclassified = [i for i in range(num_examples) if top1[i] != labels[i]]
    if len(misclassified) >= expected_count:
        ranked = sorted(misclassified, key=lambda i: (-probabilities[i, top1[i]], i))
        chosen = sorted(ranked[:expected_count])
        assert report.changed_indices.tolist() == chosen
        assert all(noisy[i] == top1[i] for i in chosen)
    else:
        assert all(noisy[i] == top1[i] for i in misclassified)
        correct = [i for i in range(num_examples) if top1[i] == labels[i]]

        def second(i):
            others = [c for c in range(num_classes) if c != labels[i]]
            return max(others, key=lambda c: (probabilities[i, c], -c))

        ranked = sorted(correct, key=lambda i: (-probabilities[i, second(i)], i))
        chosen = ranked[: expected_count - len(misclassified)]
        assert sorted(chosen + misclassified) == report.changed_indices.tolist()
        for i in chosen:
            if probabilities[i, second(i)] > 0:
                assert noisy[i] == second(i)


def test_feature_dependent_breaks_ties_by_index_not_by_order_of_input():
    # Twenty identical, misclassified rows: the lowest indices are relabelled.
    labels = np.zeros(40, int)
    probabilities = np.tile([[0.2, 0.8]], (40, 1))
    probabilities[20:] = [0.9, 0.1]  # correct
    noisy, report = noise.feature_dependent_noise(labels, probabilities, 0.25)
    assert report.changed_indices.tolist() == list(range(10))
    # The same values as float32 or float64 give the same choice.
    again = noise.feature_dependent_noise(labels, probabilities.astype(np.float32), 0.25)
    np.testing.assert_array_equal(again.labels, noisy)


def test_feature_dependent_argmax_ties_go_to_the_lowest_class():
    labels = np.array([1, 1, 1, 1])
    probabilities = np.full((4, 4), 0.25)  # every class ties: top-1 is class 0
    noisy, _ = noise.feature_dependent_noise(labels, probabilities, 0.5)
    assert noisy.tolist() == [0, 0, 1, 1]


def test_feature_dependent_draws_a_random_class_where_no_second_class():
    num_examples = 300
    labels = np.repeat(np.arange(3), num_examples // 3)
    probabilities = np.eye(3)[labels]  # all correct, second-class probability 0
    noisy, report = noise.feature_dependent_noise(labels, probabilities, 0.5, seed=0)
    assert report.changed_indices.tolist() == list(range(150))  # ties: lowest indices
    assert np.all(noisy[:150] != labels[:150])
    assert len(set(noisy[:100].tolist())) == 2  # class 0 goes to both 1 and 2
    again, _ = noise.feature_dependent_noise(labels, probabilities, 0.5, seed=0)
    other, _ = noise.feature_dependent_noise(labels, probabilities, 0.5, seed=1)
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)


def test_feature_dependent_two_classes_rate_close_to_one():
    labels = np.repeat([0, 1], 50)
    probabilities = random_probabilities(100, 2, 3)
    noisy, report = noise.feature_dependent_noise(labels, probabilities, 0.99)
    assert report.changed_indices.size == 99
    assert np.all(noisy[report.changed_indices] == 1 - labels[report.changed_indices])


@pytest.mark.parametrize(
    "probabilities, error, message",
    [
        (np.full((3, 2), 0.5), ValueError, r"Expected shape \(4, 2\)"),
        (np.full(4, 0.5), ValueError, r"Expected shape \(N, K\)"),
        (np.full((4, 3), 0.5), ValueError, "row 0 sums to 1.5.*softmax"),
        (np.array([[1.5, -0.5]] * 4), ValueError, "negative entry"),
        (np.ones((4, 2), int), TypeError, "Expected floats"),
    ],
)
def test_feature_dependent_rejects_bad_probabilities(probabilities, error, message):
    with pytest.raises(error, match=message):
        noise.feature_dependent_noise(np.array([0, 1, 0, 1]), probabilities, 0.4)


def test_feature_dependent_rejects_labels_beyond_the_probabilities():
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        noise.feature_dependent_noise(np.array([0, 2]), np.full((2, 2), 0.5), 0.4)


# Every model: r = 0, determinism, validation ---------------------------------------------


def every_model(labels, rate, seed):
    num_classes = 10
    probabilities = random_probabilities(labels.size, num_classes, 5)
    return {
        "symmetric": noise.symmetric_noise(labels, rate, num_classes=num_classes, seed=seed),
        "symmetric_uniform": noise.symmetric_uniform_noise(
            labels, rate, num_classes=num_classes, seed=seed
        ),
        "pair": noise.pair_noise(labels, rate, num_classes=num_classes, seed=seed),
        "cifar10_pair": noise.cifar10_pair_noise(labels, rate, seed=seed),
        "feature_dependent": noise.feature_dependent_noise(
            labels, probabilities, rate, seed=seed
        ),
    }


def test_rate_zero_changes_nothing():
    labels = np.repeat(np.arange(10), 30)
    for name, (noisy, report) in every_model(labels, 0.0, 0).items():
        np.testing.assert_array_equal(noisy, labels, err_msg=name)
        assert report.achieved_rate == 0.0 and report.changed_indices.size == 0


def test_deterministic_per_seed():
    labels = np.repeat(np.arange(10), 30)
    first = every_model(labels, 0.4, seed=7)
    second = every_model(labels, 0.4, seed=7)
    other = every_model(labels, 0.4, seed=8)
    for name in first:
        np.testing.assert_array_equal(first[name].labels, second[name].labels, err_msg=name)
        if name != "feature_dependent":  # its draws are not random here
            assert not np.array_equal(first[name].labels, other[name].labels), name


def test_input_labels_are_not_modified():
    labels = np.repeat(np.arange(10), 30)
    copy = labels.copy()
    every_model(labels, 0.5, 0)
    np.testing.assert_array_equal(labels, copy)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.2, float("nan")])
def test_rate_outside_unit_interval(rate):
    for function in (noise.symmetric_noise, noise.symmetric_uniform_noise, noise.pair_noise):
        with pytest.raises(ValueError, match=r"Invalid value for argument `rate`.*\[0, 1\)"):
            function(np.array([0, 1]), rate)


@pytest.mark.parametrize("rate", ["0.4", None, True])
def test_rate_of_wrong_type(rate):
    with pytest.raises(TypeError, match="Expected a float in"):
        noise.symmetric_noise(np.array([0, 1]), rate)


@pytest.mark.parametrize(
    "labels, num_classes, error, message",
    [
        (np.array([0, 1, 5]), 3, ValueError, r"values in \[0, 5\].*in \[0, 3\)"),
        (np.array([-1, 1]), None, ValueError, r"values in \[-1, 1\]"),
        (np.array([0.0, 1.0]), None, TypeError, "zero-indexed integers"),
        (np.zeros((2, 2), int), None, ValueError, r"shape \(N,\)"),
        (np.array([], int), None, ValueError, "empty"),
        (np.array([0, 0]), None, ValueError, "at least two classes"),
    ],
)
def test_bad_labels(labels, num_classes, error, message):
    with pytest.raises(error, match=message):
        noise.symmetric_noise(labels, 0.2, num_classes=num_classes)


def test_bad_seed():
    with pytest.raises(TypeError, match="non-negative integer"):
        noise.symmetric_noise(np.array([0, 1]), 0.2, seed=-1)
    with pytest.raises(TypeError, match="non-negative integer"):
        noise.symmetric_noise(np.array([0, 1]), 0.2, seed=1.5)


# apply_noise -----------------------------------------------------------------------------


def test_apply_noise_dispatches_to_each_model():
    labels = np.repeat(np.arange(10), 20)
    probabilities = random_probabilities(200, 10, 0)
    for name, function in [
        ("symmetric", noise.symmetric_noise),
        ("symmetric_uniform", noise.symmetric_uniform_noise),
        ("pair", noise.pair_noise),
    ]:
        expected = function(labels, 0.3, seed=2).labels
        np.testing.assert_array_equal(noise.apply_noise(labels, name, 0.3, seed=2).labels, expected)
    np.testing.assert_array_equal(
        noise.apply_noise(labels, "feature_dependent", 0.3, probabilities=probabilities).labels,
        noise.feature_dependent_noise(labels, probabilities, 0.3).labels,
    )
    none = noise.apply_noise(labels, "none")
    np.testing.assert_array_equal(none.labels, labels)
    assert none.report.achieved_rate == 0
    matrix = np.eye(10)[::-1] * 0.5 + np.eye(10) * 0.5
    by_name = noise.apply_noise(labels, "transition_matrix", transition_matrix=matrix, seed=1)
    direct = noise.transition_matrix_noise(labels, matrix, seed=1)
    np.testing.assert_array_equal(by_name.labels, direct.labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise": "gaussian", "rate": 0.2}, "Expected one of 'none', 'symmetric'"),
        ({"noise": "symmetric"}, "Missing argument `rate`"),
        ({"noise": "none", "rate": 0.4}, "Expected 0 or None"),
        ({"noise": "feature_dependent", "rate": 0.4}, "Missing argument `probabilities`"),
        ({"noise": "transition_matrix"}, "Missing argument `transition_matrix`"),
        (
            {"noise": "transition_matrix", "rate": 0.2, "transition_matrix": np.eye(2)},
            "the matrix sets the rate",
        ),
        ({"noise": "symmetric", "rate": 0.2, "transition_matrix": np.eye(2)}, "only with"),
    ],
)
def test_apply_noise_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        noise.apply_noise(np.array([0, 1]), **kwargs)


def test_noise_report_from_real_labels():
    report = noise.noise_report([0, 0, 1, 1], [0, 1, 1, 1], noise="handmade")
    assert report.achieved_rate == 0.25
    assert report.changed_indices.tolist() == [1]
    assert report.transition_matrix.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    assert "achieved 0.2500" in report.summary()
    with pytest.raises(ValueError, match="Expected the shape of `clean_labels`"):
        noise.noise_report([0, 1], [0, 1, 1], noise="x")
