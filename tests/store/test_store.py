"""The Redis voiceprint store, the replica-local index and its sync — against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from app.core.errors import InvalidSpeakerId, StoreUnavailable
from app.core.ids import validate_speaker_id
from app.core.vectors import l2_normalize
from app.store.index import VoiceprintIndex
from app.store.keys import KeySchema
from app.store.redis_store import RedisVoiceprintStore
from app.store.sync import IndexSyncer
from tests.support.redis_server import OwnRedis, RedisProcess

DIM = 16

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def unit(rng: np.random.Generator, n: int = 1, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- the index (pure numpy) -----------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 7, 16, 17, 50])  # both top-k strategies (argmax passes, partition)
def test_index_search_matches_brute_force(top_k: int) -> None:
    rng = np.random.default_rng(1)
    index = VoiceprintIndex(DIM, capacity=4)  # forces growth
    vectors = unit(rng, 3000)
    ids = [f"s{i}" for i in range(3000)]
    index.upsert_many(ids, vectors * 3.0)  # stored normalised whatever the scale
    query = unit(rng)[0]
    expected = np.argsort(-(vectors @ query))[:top_k]
    hits = index.search(query, top_k)
    assert [h.speaker_id for h in hits] == [ids[i] for i in expected]
    np.testing.assert_allclose([h.score for h in hits], (vectors @ query)[expected], rtol=1e-5)


def test_index_remove_upsert_and_candidates() -> None:
    rng = np.random.default_rng(2)
    index = VoiceprintIndex(DIM)
    vectors = unit(rng, 10)
    index.replace_all([f"s{i}" for i in range(10)], vectors)
    assert index.remove("s3")
    assert not index.remove("s3")
    assert len(index) == 9
    assert "s3" not in index
    # the query equals s3: it must not come back; s9 (moved into s3's row) must still be exact
    assert all(h.speaker_id != "s3" for h in index.search(vectors[3], 10))
    assert index.search(vectors[9], 1)[0].speaker_id == "s9"
    index.upsert("s9", vectors[0])  # overwrite in place
    assert len(index) == 9
    assert index.search(vectors[0], 2)[1].score == pytest.approx(1.0, abs=1e-5)
    assert [h.speaker_id for h in index.search(vectors[2], 1)] == ["s2"]
    duplicate = VoiceprintIndex(DIM)
    duplicate.replace_all(["a", "b", "c"], np.stack([vectors[0], vectors[1], vectors[0]]))
    assert [h.speaker_id for h in duplicate.search(vectors[0], 3)][:2] == ["a", "c"]  # ties: row order
    restricted = index.search(vectors[5], 5, candidates=["s1", "s2", "nobody"])
    assert {h.speaker_id for h in restricted} == {"s1", "s2"}
    assert index.search(vectors[0], 5, candidates=[]) == []
    with pytest.raises(ValueError, match="zero"):
        index.upsert("z", np.zeros(DIM, dtype=np.float32))


def test_speaker_id_validation() -> None:
    assert validate_speaker_id("alice.smith@example-1") == "alice.smith@example-1"
    for bad in ["", "has space", "a:b", "-leading", "x" * 129, "ünï"]:
        with pytest.raises(InvalidSpeakerId):
            validate_speaker_id(bad)


# --- the Redis store ------------------------------------------------------------------------------
@pytest.fixture
def keys() -> KeySchema:
    return KeySchema(f"t{uuid.uuid4().hex[:8]}", "default", "modelA@0123456789ab")


@pytest.fixture
async def store(redis_server: RedisProcess, keys: KeySchema) -> AsyncIterator[RedisVoiceprintStore]:
    s = RedisVoiceprintStore.from_url(redis_server.url, keys, DIM)
    yield s
    await s.close()


async def _all_keys(client: aioredis.Redis, namespace: str) -> set[bytes]:
    return {k async for k in client.scan_iter(match=f"{namespace}:*")}


async def test_enroll_accumulates_and_reads_back(store: RedisVoiceprintStore) -> None:
    rng = np.random.default_rng(3)
    a, b = unit(rng, 2)
    first = await store.add_utterances("alice", a, 1, 2.5, {"team": "x"})
    assert first.created
    assert first.count == 1
    second = await store.add_utterances("alice", b, 1, 1.5, None)
    assert not second.created
    assert second.count == 2
    assert second.speech_seconds == pytest.approx(4.0)
    vp = await store.get("alice")
    assert vp is not None
    np.testing.assert_allclose(vp.sum, a + b, rtol=1e-6)
    np.testing.assert_allclose(vp.direction(), l2_normalize(a + b), rtol=1e-6)
    assert vp.metadata == {"team": "x"}  # metadata kept when not given
    assert await store.get("bob") is None
    assert await store.list_ids(None, 10) == ["alice"]
    assert second.version == first.version + 1 == await store.version()


async def test_fifty_concurrent_enrollments_lose_nothing(store: RedisVoiceprintStore) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 50)
    # 50 separate connections writing at once (the pool opens one per concurrent command)
    await asyncio.gather(*(store.add_utterances("carol", v, 1, 1.0, None) for v in vectors))
    vp = await store.get("carol")
    assert vp is not None
    assert vp.count == 50
    assert vp.speech_seconds == pytest.approx(50.0)
    np.testing.assert_allclose(vp.sum, vectors.sum(axis=0), atol=1e-5)
    assert await store.version() == 50
    changes = await store.changes_after(None)
    assert [c.version for c in changes] == list(range(1, 51))


async def test_delete_removes_every_key_under_every_model(
    redis_server: RedisProcess, store: RedisVoiceprintStore, keys: KeySchema
) -> None:
    rng = np.random.default_rng(5)
    other = RedisVoiceprintStore.from_url(
        redis_server.url, KeySchema(keys.namespace, keys.tenant, "modelB@ba9876543210"), DIM
    )
    try:
        await store.add_utterances("dave", unit(rng)[0], 1, 2.0, {"k": 1})
        await store.add_utterances("erin", unit(rng)[0], 1, 2.0, None)
        await other.add_utterances("dave", unit(rng)[0], 1, 2.0, None)
        assert await store.other_models_with("dave") == ["modelB@ba9876543210"]
        assert await other.other_models_with("dave") == ["modelA@0123456789ab"]
        assert await store.other_models_with("erin") == []

        deleted = await store.delete_everywhere("dave")
        assert sorted(deleted) == ["modelA@0123456789ab", "modelB@ba9876543210"]
        remaining = await _all_keys(store.client, keys.namespace)
        assert not [k for k in remaining if b"dave" in k and b":spk:" in k]
        assert await store.get("dave") is None
        assert await other.get("dave") is None
        assert await store.list_ids(None, 10) == ["erin"]
        assert await other.list_ids(None, 10) == []
        assert await store.delete_everywhere("dave") == []
    finally:
        await other.close()


async def test_list_pagination_is_by_id(store: RedisVoiceprintStore) -> None:
    rng = np.random.default_rng(6)
    names = [f"spk{i:02d}" for i in range(7)]
    for name in reversed(names):
        await store.add_utterances(name, unit(rng)[0], 1, 1.0, None)
    page1 = await store.list_ids(None, 3)
    page2 = await store.list_ids(page1[-1], 3)
    page3 = await store.list_ids(page2[-1], 3)
    assert page1 + page2 + page3 == names
    assert await store.count() == 7


# --- index sync between replicas ------------------------------------------------------------------
async def test_two_replicas_see_each_others_changes(redis_server: RedisProcess, keys: KeySchema) -> None:
    rng = np.random.default_rng(7)
    store_a = RedisVoiceprintStore.from_url(redis_server.url, keys, DIM)
    store_b = RedisVoiceprintStore.from_url(redis_server.url, keys, DIM)
    index_a, index_b = VoiceprintIndex(DIM), VoiceprintIndex(DIM)
    sync_a = IndexSyncer(store_a, index_a, 0.05)
    sync_b = IndexSyncer(store_b, index_b, 0.05)
    try:
        v = unit(rng, 3)
        await store_a.add_utterances("pre", v[0], 1, 1.0, None)
        await sync_a.sync_once()
        await sync_b.sync_once()
        assert "pre" in index_a
        assert "pre" in index_b

        await store_a.add_utterances("new", v[1], 1, 1.0, None)
        await store_a.add_utterances("pre", v[2], 1, 1.0, None)
        await sync_b.sync_once()
        assert "new" in index_b
        hit = index_b.search(l2_normalize(v[0] + v[2]), 1)[0]
        assert hit.speaker_id == "pre"
        assert hit.score == pytest.approx(1.0, abs=1e-5)

        await store_b.delete_everywhere("new")
        await sync_a.sync_once()
        assert "new" not in index_a
        assert len(index_a) == 1
    finally:
        await store_a.close()
        await store_b.close()


async def test_sync_reloads_after_a_gap(store: RedisVoiceprintStore) -> None:
    rng = np.random.default_rng(8)
    index = VoiceprintIndex(DIM)
    syncer = IndexSyncer(store, index, 0.05)
    await store.add_utterances("a", unit(rng)[0], 1, 1.0, None)
    await syncer.sync_once()
    # Entries this replica never saw are trimmed away: it must notice and reload from the hashes.
    await store.add_utterances("b", unit(rng)[0], 1, 1.0, None)
    await store.add_utterances("c", unit(rng)[0], 1, 1.0, None)
    await store.client.xtrim(store.keys.changes, maxlen=1)
    await syncer.sync_once()
    assert {"a", "b", "c"} <= {h.speaker_id for h in index.search(unit(rng)[0], 10)}
    # The store is wiped (a new empty Redis): the version goes backwards and the index empties.
    for key in await _all_keys(store.client, store.keys.namespace):
        await store.client.delete(key)
    await syncer.sync_once()
    assert len(index) == 0


async def test_a_new_history_with_the_same_versions_drops_rows_written_through(
    store: RedisVoiceprintStore,
) -> None:
    # This replica wrote "a" through to its index, but Redis lost its data before the next poll, and
    # another write started a new history at the same version number: the index must not keep "a".
    rng = np.random.default_rng(10)
    index = VoiceprintIndex(DIM)
    syncer = IndexSyncer(store, index, 0.05)
    await syncer.sync_once()  # version 0
    written = await store.add_utterances("a", unit(rng)[0], 1, 1.0, None)
    await syncer.write_through("a", written.sum)
    for key in await _all_keys(store.client, store.keys.namespace):
        await store.client.delete(key)
    result = await store.add_utterances("b", unit(rng)[0], 1, 1.0, None)
    assert result.version == 1  # the same version the lost history reached
    await syncer.sync_once()
    assert "b" in index
    assert "a" not in index


# --- Redis going away and coming back -------------------------------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_store_unavailable_and_recovery(own_redis: OwnRedis, keys: KeySchema) -> None:
    rng = np.random.default_rng(9)
    store = RedisVoiceprintStore.from_url(own_redis.url, keys, DIM, timeout_s=0.5)
    index = VoiceprintIndex(DIM)
    syncer = IndexSyncer(store, index, 0.05)
    try:
        await store.add_utterances("a", unit(rng)[0], 1, 1.0, None)
        await syncer.sync_once()
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("a")
        with pytest.raises(StoreUnavailable):
            await store.add_utterances("a", unit(rng)[0], 1, 1.0, None)
        with pytest.raises(StoreUnavailable):
            await syncer.sync_once()
        assert not syncer.healthy
        assert not await store.ping()
        own_redis.start()  # same port, empty data (no persistence in this test server)
        assert await store.ping()
        result = await store.add_utterances("b", unit(rng)[0], 1, 1.0, None)
        assert result.created
        assert result.version == 1
        await syncer.sync_once()
        assert syncer.healthy
        assert "b" in index
        assert "a" not in index
    finally:
        await store.close()
