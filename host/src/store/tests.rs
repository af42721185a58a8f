//! Behaviour of the store, stated as tests. No timing assertions: correctness only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tokio::task::JoinSet;

use super::*;

fn job(id: &str, principal: &str, key: Option<&str>) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        principal: principal.to_owned(),
        agent: "echo".into(),
        agent_name: "echo".into(),
        agent_version: "1.0.0".into(),
        input: json!({"text": "hi"}),
        lease: json!({"grants": {"log": ["*"]}}),
        status: JobStatus::Queued,
        output: None,
        error: None,
        idempotency_key: key.map(str::to_owned),
        request_hash: key.map(|_| "hash-1".to_owned()),
        parent_id: None,
        depth: 0,
        attempt: 0,
        created_at: 1_000,
        started_at: None,
        finished_at: None,
        trace_parent: None,
    }
}

fn anyone() -> KvOwner {
    KvOwner::unlimited("echo", "alice")
}

fn open(dir: &tempfile::TempDir) -> Store {
    match Store::open(dir.path()) {
        Ok(s) => s,
        Err(e) => panic!("open failed: {e}"),
    }
}

async fn created(store: &Store, j: JobRecord) -> JobRecord {
    match store.insert_job(j).await {
        Ok(InsertOutcome::Created(j)) => j,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[tokio::test]
async fn group_commit_acks_only_after_commit_and_survives_reopen() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let mut tasks = JoinSet::new();
    for _ in 0..300 {
        let store = store.clone();
        tasks.spawn(async move {
            let id = new_job_id();
            store.insert_job(job(&id, "alice", None)).await?;
            // Acked ⇒ committed ⇒ visible to a different (reader) connection right away.
            let seen = store.get_job(&id).await?;
            assert!(seen.is_some(), "acked job {id} not visible to readers");
            Ok::<_, StoreError>(id)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.push(r.map_err(|e| StoreError::Task(e.to_string()))??);
    }
    store.close().await?;

    let store = open(&dir);
    for id in &ids {
        assert!(store.get_job(id).await?.is_some(), "job {id} lost on reopen");
        let events = store.events_after(id, 0, 10).await?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].seq, 1);
        assert_eq!(events[0].data, json!({"status": "queued"}));
    }
    store.close().await
}

#[tokio::test]
async fn event_seqs_are_gapless_under_concurrent_appenders() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let id = new_job_id();
    created(&store, job(&id, "alice", None)).await;
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200 {
                seqs.push(store.append_event(&id, "log", json!({"t": t, "i": i})).await?);
            }
            Ok::<_, StoreError>(seqs)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| StoreError::Task(e.to_string()))??);
    }
    all.sort_unstable();
    // Seq 1 is the job's initial state event.
    assert_eq!(all, (2..=1601).collect::<Vec<u64>>());

    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(&id, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        read.extend(page.into_iter().map(|e| e.seq));
    }
    assert_eq!(read, (1..=1601).collect::<Vec<u64>>());
    store.close().await
}

#[tokio::test]
async fn idempotent_insert_returns_the_existing_job_untouched() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let first = created(&store, job(&new_job_id(), "alice", Some("k1"))).await;

    let mut again = job(&new_job_id(), "alice", Some("k1"));
    again.request_hash = Some("hash-2".into());
    match store.insert_job(again.clone()).await? {
        InsertOutcome::Existing(existing) => assert_eq!(existing, first),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert!(store.get_job(&again.id).await?.is_none());
    assert_eq!(store.events_after(&first.id, 0, 10).await?.len(), 1);

    // The same key under another principal is a different job.
    created(&store, job(&new_job_id(), "bob", Some("k1"))).await;
    store.close().await
}

#[tokio::test]
async fn transition_applies_only_from_allowed_statuses() -> Result<(), StoreError> {
    use JobStatus::*;
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let id = new_job_id();
    created(&store, job(&id, "alice", None)).await;

    let start = Transition::new(&[Queued], Running, 2_000).started_at(2_000).attempt(1);
    let (running, seq) = store.transition_job(&id, start.clone()).await?.ok_or(StoreError::Closed)?;
    assert_eq!((running.status, running.started_at, running.attempt, seq), (Running, Some(2_000), 1, 2));
    // Starting twice does not apply.
    assert!(store.transition_job(&id, start).await?.is_none());

    // A cancel and a completion race; the first to commit wins.
    let cancel = store.transition_job(&id, Transition::new(&[Queued, Running], Cancelled, 3_000).finished_at(3_000));
    let complete = store.transition_job(
        &id,
        Transition::new(&[Running], Completed, 3_001).finished_at(3_001).output(json!({"ok": true})),
    );
    let (cancel, complete) = (cancel.await?, complete.await?);
    assert!(cancel.is_some() && complete.is_none());

    let final_job = store.get_job(&id).await?.ok_or(StoreError::Closed)?;
    assert_eq!((final_job.status, final_job.finished_at, final_job.output), (Cancelled, Some(3_000), None));
    let events = store.events_after(&id, 0, 10).await?;
    let statuses: Vec<_> = events.iter().map(|e| e.data["status"].clone()).collect();
    assert_eq!(statuses, vec![json!("queued"), json!("running"), json!("cancelled")]);
    assert!(matches!(
        store.transition_job("nope", Transition::new(&[Queued], Running, 1)).await,
        Err(StoreError::UnknownJob(_))
    ));
    assert!(store.unfinished_jobs().await?.is_empty());
    store.close().await
}

#[tokio::test]
async fn a_failing_op_in_a_batch_does_not_roll_back_its_neighbours() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    // Hold the writer inside a batch so the next three ops queue up and share the next batch.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let blocker = store.write(move |ctx| {
        let _ = started.send(());
        let _ = gate.recv();
        Ok(ctx.batch())
    });
    running.await.map_err(|e| StoreError::Task(e.to_string()))?;
    let put = |key: &'static str| {
        move |ctx: &mut WriteCtx<'_>| {
            ctx.tx().execute("INSERT INTO kv (namespace, key, value, updated_at) VALUES ('t', ?1, x'01', 0)", [key])?;
            Ok(ctx.batch())
        }
    };
    let failed_in = Arc::new(AtomicU64::new(0));
    let a = store.write(put("a"));
    let failing = {
        let failed_in = Arc::clone(&failed_in);
        store.write(move |ctx| -> Result<(), StoreError> {
            put("partial")(ctx)?;
            failed_in.store(ctx.batch(), Ordering::SeqCst);
            Err(StoreError::KvNotInteger { namespace: "t".into(), key: "partial".into() })
        })
    };
    let b = store.write(put("b"));
    let _ = release.send(());

    let first_batch = blocker.await?;
    let (a, failing, b) = (a.await?, failing.await, b.await?);
    assert!(matches!(failing, Err(StoreError::KvNotInteger { .. })));
    assert_ne!(first_batch, a);
    assert_eq!(a, b);
    assert_eq!(failed_in.load(Ordering::SeqCst), a);
    assert!(store.kv_get("t", "a").await?.is_some());
    assert!(store.kv_get("t", "b").await?.is_some());
    assert!(store.kv_get("t", "partial").await?.is_none());
    store.close().await
}

#[tokio::test]
async fn kv_increment_counts_and_rejects_non_integers_and_overflow() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    assert_eq!(store.kv_increment(&anyone(), "ns", "n", 5).await?, 5);
    assert_eq!(store.kv_increment(&anyone(), "ns", "n", -2).await?, 3);
    assert_eq!(store.kv_get("ns", "n").await?, Some(b"3".to_vec()));

    store.kv_set(&anyone(), "ns", "text", b"hello".to_vec()).await?;
    assert!(matches!(store.kv_increment(&anyone(), "ns", "text", 1).await, Err(StoreError::KvNotInteger { .. })));
    assert_eq!(store.kv_get("ns", "text").await?, Some(b"hello".to_vec()));

    store.kv_set(&anyone(), "ns", "big", i64::MAX.to_string().into_bytes()).await?;
    assert!(matches!(store.kv_increment(&anyone(), "ns", "big", 1).await, Err(StoreError::KvOverflow { .. })));

    assert!(store.kv_delete("ns", "n").await?);
    assert!(!store.kv_delete("ns", "n").await?);
    assert_eq!(store.kv_get("ns", "n").await?, None);
    store.close().await
}

#[tokio::test]
async fn list_jobs_pages_newest_first_with_a_cursor() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut j = job(&new_job_id(), "alice", None);
        if i % 2 == 0 {
            j.agent_name = "other".into();
        }
        ids.push(created(&store, j).await.id);
    }
    created(&store, job(&new_job_id(), "bob", None)).await;
    ids.reverse();

    let mut filter = JobFilter { principal: "alice".into(), limit: 3, ..JobFilter::default() };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, next) = store.list_jobs(filter.clone()).await?;
        pages += 1;
        seen.extend(page.into_iter().map(|j| j.id));
        match next {
            Some(c) => filter.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!((seen, pages), (ids.clone(), 3));

    let (echo, next) = store
        .list_jobs(JobFilter {
            principal: "alice".into(),
            statuses: vec![JobStatus::Queued],
            agent: Some("echo".into()),
            limit: 100,
            ..JobFilter::default()
        })
        .await?;
    assert_eq!(echo.len(), 3);
    assert!(next.is_none());
    store.close().await
}

#[tokio::test]
async fn reopen_after_drop_without_close_keeps_committed_rows() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let id = new_job_id();
    created(&store, job(&id, "alice", None)).await;
    store.append_event(&id, "log", json!("one")).await?;
    store.kv_set(&anyone(), "ns", "k", b"v".to_vec()).await?;
    // Like a killed process: the store is never closed, its writer never exits cleanly and
    // nothing is checkpointed out of the WAL.
    std::mem::forget(store.clone());
    drop(store);

    let store = open(&dir);
    assert_eq!(store.get_job(&id).await?.map(|j| j.status), Some(JobStatus::Queued));
    assert_eq!(store.events_after(&id, 0, 10).await?.len(), 2);
    assert_eq!(store.kv_get("ns", "k").await?, Some(b"v".to_vec()));
    assert_eq!(store.unfinished_jobs().await?.len(), 1);
    // New seqs continue after the committed ones.
    assert_eq!(store.append_event(&id, "log", json!("two")).await?, 3);
    store.close().await
}

#[tokio::test]
async fn a_dropped_append_future_still_writes_the_event() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let id = new_job_id();
    created(&store, job(&id, "alice", None)).await;
    let mut notified = store.watch_job(&id);
    drop(store.append_event(&id, "progress", json!({"pct": 50})));
    drop(store.record_audit(AuditRecord {
        id: None,
        job_id: id.clone(),
        principal: "alice".into(),
        scope: "net.fetch".into(),
        target: "https://example.com/".into(),
        decision: Decision::Deny,
        reason: Some("no grant".into()),
        at: 5,
    }));
    // Committed before we are told about it.
    tokio::time::timeout(std::time::Duration::from_secs(5), notified.next())
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
    let events = store.events_after(&id, 1, 10).await?;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].seq, events[0].kind.as_str()), (2, "progress"));
    store.close().await?;

    let store = open(&dir);
    let audit = store.audit_for_job(&id).await?;
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].decision, audit[0].id.is_some()), (Decision::Deny, true));
    store.close().await
}

#[tokio::test]
async fn disk_full_is_a_typed_error_and_the_writer_keeps_serving() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    // Cap the file at its current size: SQLite then reports SQLITE_FULL, exactly as on a full disk.
    store.write(|ctx| Ok(ctx.tx().query_row("PRAGMA max_page_count = 1", [], |r| r.get::<_, i64>(0))?)).await?;
    let big = vec![7_u8; 1 << 20];
    let err = store.kv_set(&anyone(), "ns", "big", big.clone()).await;
    match err {
        Err(StoreError::DiskFull { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(err_message_says_what_to_do(&store.kv_set(&anyone(), "ns", "big", big.clone()).await));

    store.write(|ctx| Ok(ctx.tx().query_row("PRAGMA max_page_count = 1000000", [], |r| r.get::<_, i64>(0))?)).await?;
    store.kv_set(&anyone(), "ns", "big", big).await?;
    assert_eq!(store.kv_get("ns", "big").await?.map(|v| v.len()), Some(1 << 20));
    store.close().await
}

fn err_message_says_what_to_do<T>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(e) if e.to_string().contains("disk full") && e.to_string().contains("free space"))
}

#[tokio::test]
async fn opening_a_database_from_a_newer_corral_is_refused() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    open(&dir).close().await?;
    rusqlite::Connection::open(dir.path().join(DB_FILE))?.pragma_update(None, "user_version", 99)?;
    match Store::open(dir.path()) {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade corral"));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn agents_upsert_by_name_and_version() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let mut a = AgentRecord {
        name: "fetch".into(),
        version: "1.0.0".into(),
        sha256: "aa".into(),
        description: "fetches".into(),
        scopes: json!(["net.fetch"]),
        path: "agents/fetch.wasm".into(),
        loaded_at: 1,
    };
    store.upsert_agent(a.clone()).await?;
    a.sha256 = "bb".into();
    store.upsert_agent(a.clone()).await?;
    assert_eq!(store.list_agents().await?, vec![a]);
    store.close().await
}

#[tokio::test]
async fn writes_after_close_fail_with_closed() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let other = store.clone();
    store.close().await?;
    assert!(matches!(other.kv_set(&anyone(), "a", "b", vec![]).await, Err(StoreError::Closed)));
    assert!(matches!(other.append_event("x", "log", json!(1)).await, Err(StoreError::Closed)));
    Ok(())
}

#[tokio::test]
async fn appending_to_an_unknown_job_is_a_typed_error() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    assert!(matches!(store.append_event("nope", "log", json!(1)).await, Err(StoreError::UnknownJob(_))));
    store.close().await
}

#[tokio::test]
async fn last_event_seqs_answers_many_jobs_in_one_read_and_leaves_out_unknown_ones() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let (a, b) = (new_job_id(), new_job_id());
    created(&store, job(&a, "alice", None)).await;
    created(&store, job(&b, "alice", None)).await;
    for i in 0..3 {
        store.append_event(&a, "log", json!({"i": i})).await?;
    }
    let seqs = store.last_event_seqs(vec![a.clone(), b.clone(), "nobody".into()]).await?;
    assert_eq!(seqs.get(&a).copied(), Some(store.last_event_seq(&a).await?));
    assert_eq!(seqs.get(&b).copied(), Some(store.last_event_seq(&b).await?));
    assert!(!seqs.contains_key("nobody"));
    assert!(store.last_event_seqs(Vec::new()).await?.is_empty());
    store.close().await
}

fn finished(id: &str, parent: Option<&str>, created_at: i64, finished_at: i64) -> JobRecord {
    JobRecord {
        status: JobStatus::Completed,
        parent_id: parent.map(str::to_owned),
        created_at,
        started_at: Some(created_at),
        finished_at: Some(finished_at),
        output: Some(json!({"ok": true})),
        ..job(id, "alice", Some(id))
    }
}

fn running(id: &str, parent: Option<&str>, created_at: i64) -> JobRecord {
    JobRecord {
        status: JobStatus::Running,
        parent_id: parent.map(str::to_owned),
        created_at,
        started_at: Some(created_at),
        ..job(id, "alice", None)
    }
}

fn audit_row(job_id: &str) -> AuditRecord {
    AuditRecord {
        id: None,
        job_id: job_id.to_owned(),
        principal: "alice".into(),
        scope: "log".into(),
        target: "info".into(),
        decision: Decision::Allow,
        reason: None,
        at: 1_000,
    }
}

async fn prune_all(store: &Store, before: i64, chunk: u32) -> Result<usize, StoreError> {
    let (mut cursor, mut jobs) = (0, 0);
    loop {
        let round = store.prune_jobs(before, cursor, chunk).await?;
        (cursor, jobs) = (round.cursor, jobs + round.jobs);
        if round.done {
            return Ok(jobs);
        }
    }
}

#[tokio::test]
async fn pruning_deletes_old_finished_jobs_and_keeps_recent_and_live_ones() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let old = finished("old", None, 1_000, 2_000);
    store.insert_job_with(old, Vec::new(), vec![audit_row("old")]).await?;
    store.insert_job(running("live-parent", None, 1_100)).await?;
    store.insert_job(finished("child-of-live", Some("live-parent"), 1_200, 2_000)).await?;
    store.insert_job(finished("parent-of-live", None, 1_300, 2_000)).await?;
    store.insert_job(running("live-child", Some("parent-of-live"), 1_400)).await?;
    store.insert_job(finished("recent", None, 1_500, 9_000)).await?;
    store.insert_job(finished("created-late", None, 6_000, 6_500)).await?;
    store.kv_set(&anyone(), "old", "k", b"v".to_vec()).await?;

    // A chunk of one: the walk still covers every job, a round at a time.
    assert_eq!(prune_all(&store, 5_000, 1).await?, 1);

    assert!(store.get_job("old").await?.is_none(), "old finished job pruned");
    assert!(store.events_after("old", 0, 10).await?.is_empty(), "its events too");
    assert!(store.audit_for_job("old").await?.is_empty(), "its audit rows too");
    for kept in ["live-parent", "child-of-live", "parent-of-live", "live-child", "recent", "created-late"] {
        assert!(store.get_job(kept).await?.is_some(), "{kept} must be kept");
    }
    assert_eq!(store.kv_get("old", "k").await?, Some(b"v".to_vec()), "kv is not a job's record");
    // The pruned job's idempotency key is free again: its replay window was the retention.
    assert!(matches!(store.insert_job(finished("old-again", None, 7_000, 7_100)).await?, InsertOutcome::Created(_)));
    store.close().await
}

#[tokio::test]
async fn pruned_pages_are_reused_and_handed_back_to_the_file_system() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let big = json!({"text": "x".repeat(8_192)});
    for n in 0..200 {
        let id = format!("job-{n:03}");
        let events = vec![NewEvent { kind: "log".into(), data: big.clone(), at: 1_000 }];
        store.insert_job_with(finished(&id, None, 1_000, 2_000), events, Vec::new()).await?;
    }
    assert_eq!(prune_all(&store, 5_000, 64).await?, 200);
    let free = store.reclaim_free_pages(1_000_000).await?;
    assert!(free > 400, "200 × 8 KiB of events left at least 400 free pages, got {free}");
    let left = store.reclaim_free_pages(1_000_000).await?;
    assert!(left < free / 2, "most were handed back, a reserve kept for reuse: {left} of {free} left");
    assert_eq!(store.reclaim_free_pages(1_000_000).await?, left, "the reserve (a quarter of the file) stays");
    store.close().await
}

#[tokio::test]
async fn a_database_made_without_incremental_vacuum_is_converted_at_open() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE))?;
        conn.execute_batch("CREATE TABLE leftover (x INTEGER); INSERT INTO leftover VALUES (1);")?;
        let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        assert_eq!(mode, 0);
    }
    let store = open(&dir);
    store.close().await?;
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE))?;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    assert_eq!(mode, 2, "incremental");
    let kept: i64 = conn.query_row("SELECT x FROM leftover", [], |r| r.get(0))?;
    assert_eq!(kept, 1, "VACUUM keeps the rows");
    Ok(())
}

fn quota_owner(agent: &str, principal: &str, agent_quota: KvQuota, principal_quota: KvQuota) -> KvOwner {
    KvOwner { agent: agent.into(), principal: principal.into(), agent_quota, principal_quota }
}

#[tokio::test]
async fn kv_quotas_refuse_growth_past_an_agents_bytes_and_keys_and_allow_shrinking() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    // Row size = namespace + 1 + key + value: "a/k1" + 10 bytes = 14.
    let owner = quota_owner("a", "alice", KvQuota { bytes: 40, keys: 2 }, KvQuota::UNLIMITED);
    store.kv_set(&owner, "a", "k1", vec![0; 10]).await?;
    store.kv_set(&owner, "a", "k2", vec![0; 10]).await?;
    assert_eq!(store.kv_usage(OwnerKind::Agent, "a").await?, KvUsage { bytes: 28, keys: 2 });

    let third_key = store.kv_set(&owner, "a", "k3", vec![0; 1]).await;
    assert!(matches!(&third_key, Err(StoreError::KvQuota { what: "keys", .. })), "{third_key:?}");
    let too_big = store.kv_set(&owner, "a", "k1", vec![0; 23]).await;
    assert!(matches!(&too_big, Err(StoreError::KvQuota { what: "bytes", used: 28, limit: 40, .. })), "{too_big:?}");
    assert!(too_big.unwrap_err().to_string().contains("agent 'a' keeps 28 bytes of its 40"));
    assert_eq!(store.kv_get("a", "k1").await?, Some(vec![0; 10]), "a refused write changes nothing");
    assert_eq!(store.kv_usage(OwnerKind::Agent, "a").await?, KvUsage { bytes: 28, keys: 2 });

    // Overwriting with the same size fits; shrinking and deleting free room.
    store.kv_set(&owner, "a", "k1", vec![1; 22]).await?;
    assert_eq!(store.kv_usage(OwnerKind::Agent, "a").await?, KvUsage { bytes: 40, keys: 2 });
    assert!(store.kv_delete("a", "k2").await?);
    store.kv_set(&owner, "a", "k3", vec![0; 1]).await?;
    assert_eq!(store.kv_usage(OwnerKind::Agent, "a").await?, KvUsage { bytes: 31, keys: 2 });
    store.close().await
}

#[tokio::test]
async fn a_principals_kv_quota_spans_its_agents_and_a_rewrite_moves_the_row_to_its_new_owner() -> Result<(), StoreError>
{
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = open(&dir);
    let principal = KvQuota { bytes: 30, keys: 100 };
    let a = quota_owner("a", "alice", KvQuota::UNLIMITED, principal);
    let b = quota_owner("b", "alice", KvQuota::UNLIMITED, principal);
    store.kv_set(&a, "shared", "x", vec![0; 10]).await?; // 19 bytes
    assert!(matches!(
        store.kv_set(&b, "shared", "y", vec![0; 10]).await,
        Err(StoreError::KvQuota { kind: "principal", .. })
    ));
    // b rewriting a's row takes it over: a's total drops, b's grows, alice's stays.
    store.kv_set(&b, "shared", "x", vec![0; 5]).await?;
    assert_eq!(store.kv_usage(OwnerKind::Agent, "a").await?, KvUsage::default());
    assert_eq!(store.kv_usage(OwnerKind::Agent, "b").await?, KvUsage { bytes: 13, keys: 1 });
    assert_eq!(store.kv_usage(OwnerKind::Principal, "alice").await?, KvUsage { bytes: 13, keys: 1 });
    assert_eq!(store.kv_increment(&b, "shared", "n", 7).await?, 7); // "shared/n" + "7"
    assert_eq!(store.kv_usage(OwnerKind::Principal, "alice").await?, KvUsage { bytes: 13 + 9, keys: 2 });
    store.close().await
}

fn member(swarm: &str, id: &str) -> MemberRecord {
    MemberRecord {
        swarm_id: swarm.into(),
        agent_id: id.into(),
        endpoint: format!("https://{id}/swarm"),
        public_key: "key".into(),
        scheme: "corral-lp/1".into(),
        muted: false,
        joined_at: 1,
    }
}

fn inbound(id: &str, recipient: &str, at: i64) -> InboundRecord {
    InboundRecord {
        seq: 0,
        message_id: id.into(),
        swarm_id: "s".into(),
        sender: "b".into(),
        recipient: recipient.into(),
        kind: "message".into(),
        content: "hi".into(),
        wire: "{}".into(),
        muted: false,
        received_at: at,
    }
}

#[tokio::test]
async fn a_message_id_is_seen_per_sender_and_replays_write_nothing() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let swarm = SwarmRecord { swarm_id: "s".into(), name: "n".into(), master: "a".into(), muted: false, joined_at: 1 };
    store.swarm_save(swarm, vec![member("s", "a"), member("s", "b"), member("s", "c")], Vec::new()).await?;
    assert!(store.swarm_accept(inbound("m1", "a", 5), i64::MAX, MembershipChange::Nothing).await?.is_some());
    assert!(store.swarm_accept(inbound("m1", "a", 5), i64::MAX, MembershipChange::Nothing).await?.is_none());
    // Another member re-using the id is another message, not a duplicate of b's.
    let mut from_c = inbound("m1", "a", 5);
    from_c.sender = "c".into();
    let kick = MembershipChange::Remove { swarm_id: "s".into(), agent_id: "b".into() };
    assert!(store.swarm_accept(from_c, i64::MAX, kick).await?.is_some());
    let (_, members) = store.swarm("s").await?.unwrap();
    assert_eq!(members.iter().map(|m| m.agent_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(store.swarm_inbox(None, 0, 10, true).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn pruning_federation_keeps_unhandled_agent_messages_and_live_outbox_rows() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let swarm = SwarmRecord { swarm_id: "s".into(), name: "n".into(), master: "a".into(), muted: false, joined_at: 1 };
    store.swarm_save(swarm, vec![member("s", "a"), member("s", "b")], Vec::new()).await?;
    store.swarm_accept(inbound("to-host", "a", 10), 0, MembershipChange::Nothing).await?;
    let handled =
        store.swarm_accept(inbound("to-agent-done", "a/echo", 10), 0, MembershipChange::Nothing).await?.unwrap();
    store.swarm_handled(handled).await?;
    store.swarm_accept(inbound("to-agent-open", "a/echo", 10), 0, MembershipChange::Nothing).await?;
    let row = |id: &str| NewOutbox {
        message_id: id.into(),
        peer: "b".into(),
        endpoint: "https://b/swarm".into(),
        scheme: "corral-lp/1".into(),
        system: false,
        track: false,
        body: "{}".into(),
    };
    store.outbox_enqueue(vec![row("dead"), row("live")]).await?;
    let rows = store.outbox_list(10).await?;
    let dead = rows.iter().find(|r| r.message_id == "dead").unwrap().id;
    store
        .outbox_settle(Vec::new(), vec![OutboxFailure { id: dead, error: "403".into(), next_at: 0, dead: true }])
        .await?;
    store
        .record_audit(AuditRecord {
            id: None,
            job_id: "asp:x".into(),
            principal: "peer:b".into(),
            scope: "swarm.receive".into(),
            target: "s".into(),
            decision: Decision::Deny,
            reason: None,
            at: 10,
        })
        .await?;

    let gone = store.prune_swarm(now_ms() + 60_000, 100).await?;
    assert_eq!(gone, 4, "two inbox rows, the dead outbox row, the audit row");
    let left: Vec<String> = store.swarm_inbox(None, 0, 10, true).await?.into_iter().map(|m| m.message_id).collect();
    assert_eq!(left, ["to-agent-open"], "an unhandled message to an agent waits for its hand-over");
    let outbox: Vec<String> = store.outbox_list(10).await?.into_iter().map(|r| r.message_id).collect();
    assert_eq!(outbox, ["live"]);
    assert_eq!(store.swarm_unhandled(10).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn stage_reports_count_only_from_the_peer_the_message_went_to() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let swarm = SwarmRecord { swarm_id: "s".into(), name: "n".into(), master: "a".into(), muted: false, joined_at: 1 };
    store.swarm_save(swarm, vec![member("s", "a"), member("s", "b"), member("s", "c")], Vec::new()).await?;
    store
        .outbox_enqueue(vec![NewOutbox {
            message_id: "m".into(),
            peer: "b".into(),
            endpoint: "https://b/swarm".into(),
            scheme: "corral-lp/1".into(),
            system: false,
            track: true,
            body: "{}".into(),
        }])
        .await?;
    let report = |id: &str, from: &str, stage: &str| {
        let mut r = inbound(id, "a", 5);
        r.sender = from.into();
        r.content = json!({ "corral": "message.stage", "message": "m", "stage": stage }).to_string();
        r
    };
    store.swarm_accept(report("r1", "b", "FULFILLED"), i64::MAX, MembershipChange::Nothing).await?;
    store.swarm_accept(report("r2", "c", "REJECTED"), i64::MAX, MembershipChange::Nothing).await?;
    let reports = store.swarm_reports("m".into()).await?;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("FULFILLED"));
    Ok(())
}
