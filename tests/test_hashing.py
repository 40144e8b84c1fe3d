"""Row seeds and key hashes keep their exact bytes: the values below were computed by the code before
`transforms.hashing` existed (row seeds drive the noise methods, key hashes the influence job's buckets)."""

from __future__ import annotations

import datetime
import hashlib
import random

import numpy as np
import pyarrow as pa
import pytest

from transforms.hashing import SEED_NULL, seed_column_hash, splitmix64
from transforms.feeds.row_seeds import position_seeds
from transforms.hashing import key_hash, key_seeds

TABLE = pa.table({
    "i": pa.array([7, -1, None, 0, 2**40], pa.int64()),
    "s": pa.array(["a", "", None, "héllo", "a"], pa.string()),
    "f": pa.array([1.5, -0.0, None, float("nan"), 0.0], pa.float64()),
    "b": pa.array([b"x", None, b"", b"\x00\xff", b"x"], pa.binary()),
})

# columns -> (key_seeds, key_hash)
PINNED = {
    ("i",): ([-5137267319001854395, 6755974106381971767, 2361492071075283931, -6411193824288604561, 3686752072253880996],
             [445397942248739192, 8304426954397450370, 6009531555643646463, 12035550249420947055, 5547282872711017467]),
    ("s",): ([4192132519135618423, 5323092005331881792, 2361492071075283931, 8938877523920881680, 4192132519135618423],
             [3358570473285557406, 12035550249420947055, 12035550249420947055, 7175279758245755948, 3358570473285557406]),
    ("f",): ([7640868585037623358, -6411193824288604561, 2361492071075283931, 6009531555643646463, -6411193824288604561],
             [7640868585037623358, 9717522146979266976, 6009531555643646463, 6009531555643646463, 12035550249420947055]),
    ("b",): ([-1504371378994197923, 2361492071075283931, 5323092005331881792, 5954983409575894142, -1504371378994197923],
             [4308109198747586936, 12035550249420947055, 12035550249420947055, 302513280215934368, 4308109198747586936]),
    ("i", "s"): ([-6624754820447581488, 1507942410247162071, 9054788759756595123, 8020369336737746279, -8872556277940654314],
                 [9579254131764968437, 17744747974730901375, 404929074362062741, 8000320055635674581, 8748593323616650218]),
    ("s", "i"): ([-3065010102572025288, 3228513803728333896, 9054788759756595123, 430112663160002979, 3197727850386668206],
                 [15419793637346582020, 1137248877075165468, 9499470771952606644, 175996717566353841, 7554667415712835916]),
    ("i", "s", "f", "b"): (
        [4361822567324496128, -6001942385717509256, 1244649785524559442, -7165891662789024885, 1354350098076265045],
        [11110536895389205949, 18095009813106236516, 11214245161004164686, 3242082890794477538, 3652829154779685354]),
}

OTHER_TYPES = pa.table({
    "flag": pa.array([True, False, None], pa.bool_()),
    "d": pa.array([datetime.date(2024, 1, 2), None, datetime.date(1970, 1, 1)], pa.date32()),
    "ts": pa.array([1, None, 1700000000000000], pa.timestamp("us")),
    "i32": pa.array([5, -5, None], pa.int32()),
    "ls": pa.array(["q", None, "long text"], pa.large_string()),
    "f32": pa.array([0.1, -0.0, 2.5], pa.float32()),
})

# column -> (key_seeds, key_hash); None: key_hash refuses the type (date32 cannot be cast to int64), as it did before
PINNED_OTHER = {
    "flag": ([6791897765849424158, -6411193824288604561, 2361492071075283931],
             [10196009653435912478, 12035550249420947055, 6009531555643646463]),
    "d": ([8501103230093416024, 2361492071075283931, -6411193824288604561], None),
    "ts": ([6791897765849424158, 2361492071075283931, 9221950146828283952],
           [10196009653435912478, 6009531555643646463, 8007030612084996817]),
    "i32": ([-371861127037631947, -5970105824593227592, 2361492071075283931],
            [2978121567008107214, 16924910632187935367, 6009531555643646463]),
    "ls": ([-3910737253865862707, 2361492071075283931, 4316850256548431286],
           [9633114703915259701, 12035550249420947055, 6606081456988154719]),
    "f32": ([-8056032570680655918, -6411193824288604561, 3861722188214587415],
            [10390711503028895698, 9717522146979266976, 3861722188214587415]),
}


@pytest.mark.parametrize("columns", list(PINNED))
def test_key_seeds_and_key_hash_keep_their_values(columns):
    seeds, hashes = PINNED[columns]
    keys = TABLE.select(list(columns))
    assert key_seeds(keys).dtype == np.int64 and key_seeds(keys).tolist() == seeds
    assert key_hash(keys).dtype == np.uint64 and key_hash(keys).tolist() == hashes


@pytest.mark.parametrize("column", list(PINNED_OTHER))
def test_other_key_types_keep_their_values(column):
    seeds, hashes = PINNED_OTHER[column]
    keys = OTHER_TYPES.select([column])
    assert key_seeds(keys).tolist() == seeds
    if hashes is None:
        with pytest.raises(pa.ArrowNotImplementedError):
            key_hash(keys)
    else:
        assert key_hash(keys).tolist() == hashes


def test_sliced_and_chunked_keys_keep_their_values():
    sliced = pa.table({"s": pa.array(["zero", "one", "two", "three"]).slice(1, 3), "n": pa.array([1, 2, 3, 4]).slice(1, 3)})
    assert key_seeds(sliced).tolist() == [-2975659734382936074, -6604158706101058400, 8162815396775844535]
    assert key_hash(sliced).tolist() == [8141690715213491692, 11589368228854281665, 4802265764590297239]
    chunked = pa.concat_tables([pa.table({"s": ["a", "b"]}), pa.table({"s": ["c"]})])
    assert key_seeds(chunked).tolist() == [4192132519135618423, 4683681678388662006, -1667432919612465783]
    assert key_hash(chunked).tolist() == [3358570473285557406, 5455947065982476180, 14606345952791624221]


def test_position_seeds_keep_their_values():
    assert position_seeds("gs://b/dir/part-0.parquet", 10, 3).tolist() == [
        -1686309216628157941, -2665024823620403045, -426562907765100307]
    assert position_seeds("part-0.parquet/", 0, 2).tolist() == [7873067292904920717, -3928692370893792107]


def test_splitmix64_is_the_reference():
    # SplitMix64's first outputs from state 0 (Vigna's reference generator: state += golden, then finalize).
    golden = np.uint64(0x9E3779B97F4A7C15)
    states = np.arange(3, dtype=np.uint64) * golden
    assert splitmix64(states).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def _seed_hash_per_value(array: pa.Array) -> np.ndarray:
    """The row-seed string hash as first written: one Python value at a time."""
    texts = array.to_pylist()
    hashed = np.array([
        np.frombuffer(hashlib.blake2b(v if isinstance(v, bytes) else str(v).encode(), digest_size=8).digest(), np.uint64)[0]
        for v in texts], np.uint64)
    if array.null_count:
        hashed[array.is_null().to_numpy(zero_copy_only=False)] = SEED_NULL
    return hashed


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_seed_string_hash_reads_the_same_bytes_from_buffers(kind):
    rng = random.Random(0)
    for _ in range(10):
        values = [None if rng.random() < 0.1 else "".join(chr(rng.choice([65, 0xE9, 0x4E2D, 0x1F600, 0])) for _ in range(rng.randrange(6)))
                  for _ in range(50)]
        if kind in (pa.binary(), pa.large_binary()):
            values = [None if v is None else v.encode() for v in values]
        array = pa.array(values, kind).slice(rng.randrange(5), 40)
        assert seed_column_hash(array).tolist() == _seed_hash_per_value(array).tolist()
