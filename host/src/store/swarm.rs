//! Federation state: the swarms this host is in, their members and keys, the invites it
//! issued (with their uses), the ASP messages it received, the ids it has seen (replay
//! protection) and the outbox of messages still to deliver.
//!
//! Why each change is one write op: a received message is remembered as seen, stored in the
//! inbox and applied to the membership in the same transaction, so a crash can neither apply a
//! `member_kicked` without remembering it (it would be applied again) nor remember it without
//! applying it. An admission checks the invite's uses, adds the member, counts the use and
//! queues the `member_joined` broadcasts together: `max_uses` holds under concurrent joins.

use rusqlite::{OptionalExtension as _, Transaction, params};

use super::{Store, StoreError};

pub(super) const MIGRATION: &str = r#"
    CREATE TABLE swarms (
        swarm_id  TEXT PRIMARY KEY,
        name      TEXT NOT NULL,
        master    TEXT NOT NULL,
        muted     INTEGER NOT NULL DEFAULT 0,
        joined_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE swarm_members (
        swarm_id   TEXT NOT NULL,
        agent_id   TEXT NOT NULL,
        endpoint   TEXT NOT NULL,
        public_key TEXT NOT NULL,
        scheme     TEXT NOT NULL,
        muted      INTEGER NOT NULL DEFAULT 0,
        joined_at  INTEGER NOT NULL,
        PRIMARY KEY (swarm_id, agent_id)
    ) WITHOUT ROWID;
    CREATE TABLE swarm_invites (
        token_sha256 TEXT PRIMARY KEY,
        swarm_id     TEXT NOT NULL,
        max_uses     INTEGER,
        uses         INTEGER NOT NULL DEFAULT 0,
        expires_at   INTEGER,
        created_at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE swarm_seen (
        sender     TEXT NOT NULL,
        message_id TEXT NOT NULL,
        until      INTEGER NOT NULL,
        PRIMARY KEY (sender, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX swarm_seen_until ON swarm_seen(until);
    CREATE TABLE swarm_inbox (
        seq         INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL,
        swarm_id    TEXT NOT NULL,
        sender      TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        type        TEXT NOT NULL,
        content     TEXT NOT NULL,
        wire        TEXT NOT NULL,
        muted       INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        handled     INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX swarm_inbox_unhandled ON swarm_inbox(seq) WHERE handled = 0 AND instr(recipient, '/') > 0;
    CREATE TABLE swarm_outbox (
        id         INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        peer       TEXT NOT NULL,
        endpoint   TEXT NOT NULL,
        scheme     TEXT NOT NULL,
        system     INTEGER NOT NULL,
        body       TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        last_error TEXT,
        dead       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE swarm_sent (
        message_id TEXT NOT NULL,
        peer       TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (message_id, peer)
    ) WITHOUT ROWID;
    CREATE INDEX swarm_sent_at ON swarm_sent(at);
    CREATE INDEX swarm_outbox_due ON swarm_outbox(next_at) WHERE dead = 0;
    CREATE INDEX swarm_outbox_by_peer ON swarm_outbox(peer, id) WHERE dead = 0;
"#;

/// A swarm this host is a member of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmRecord {
    pub swarm_id: String,
    pub name: String,
    /// The agent id of the master (the only one who admits, kicks and transfers).
    pub master: String,
    /// Muted locally: its messages are kept but not listed by default.
    pub muted: bool,
    pub joined_at: i64,
}

/// A member of a swarm and the key its messages are verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub swarm_id: String,
    pub agent_id: String,
    pub endpoint: String,
    /// Base64 of the raw Ed25519 key.
    pub public_key: String,
    /// The signature scheme it signs with (and gets): `asp-0.1.0` or `corral-lp/1`.
    pub scheme: String,
    pub muted: bool,
    pub joined_at: i64,
}

/// A received message as stored in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    /// Assigned by the store; ignored on insert.
    pub seq: i64,
    pub message_id: String,
    pub swarm_id: String,
    pub sender: String,
    pub recipient: String,
    pub kind: String,
    pub content: String,
    /// The message as it arrived (JSON).
    pub wire: String,
    pub muted: bool,
    pub received_at: i64,
}

/// A message to deliver to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutbox {
    pub message_id: String,
    pub peer: String,
    pub endpoint: String,
    /// The scheme the peer gets (a retry is signed again under it, with a fresh timestamp).
    pub scheme: String,
    /// A system message: sent only after everything queued before it to the same peer.
    pub system: bool,
    /// Remember that this message went to this peer (a message to one of its agents, whose
    /// stage reports are taken from that peer only).
    pub track: bool,
    /// The signed message (JSON), exactly as it is posted.
    pub body: String,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub id: i64,
    pub message_id: String,
    pub peer: String,
    pub endpoint: String,
    pub scheme: String,
    pub system: bool,
    pub body: String,
    pub attempts: u32,
    pub next_at: i64,
    pub created_at: i64,
    pub last_error: Option<String>,
    pub dead: bool,
}

/// A failed delivery attempt of an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxFailure {
    pub id: i64,
    pub error: String,
    pub next_at: i64,
    pub dead: bool,
}

/// What a verified message (or a local operation) does to the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Nothing,
    Add(MemberRecord),
    Remove {
        swarm_id: String,
        agent_id: String,
    },
    /// This host is no longer in the swarm (it left, or was kicked).
    Forget {
        swarm_id: String,
    },
    SetMaster {
        swarm_id: String,
        agent_id: String,
    },
    MuteMember {
        swarm_id: String,
        agent_id: String,
        muted: bool,
    },
    MuteSwarm {
        swarm_id: String,
        muted: bool,
    },
}

/// The outcome of a join at the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; the members now (the new one included).
    Admitted(Vec<MemberRecord>),
    UnknownSwarm,
    /// This host is no longer the master (it transferred the role).
    NotMaster(String),
    /// The token verifies but this host has no record of issuing it.
    UnknownInvite,
    Exhausted(u64),
    AlreadyMember,
}

const MEMBER_COLUMNS: &str = "swarm_id, agent_id, endpoint, public_key, scheme, muted, joined_at";

fn member_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MemberRecord> {
    Ok(MemberRecord {
        swarm_id: row.get(0)?,
        agent_id: row.get(1)?,
        endpoint: row.get(2)?,
        public_key: row.get(3)?,
        scheme: row.get(4)?,
        muted: row.get(5)?,
        joined_at: row.get(6)?,
    })
}

fn members_of(conn: &rusqlite::Connection, swarm_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MEMBER_COLUMNS} FROM swarm_members WHERE swarm_id = ?1 ORDER BY joined_at, agent_id"
    ))?;
    let rows = stmt.query_map([swarm_id], member_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn insert_member(tx: &Transaction<'_>, m: &MemberRecord) -> Result<(), StoreError> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO swarm_members ({MEMBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![m.swarm_id, m.agent_id, m.endpoint, m.public_key, m.scheme, m.muted, m.joined_at])?;
    Ok(())
}

fn forget(tx: &Transaction<'_>, swarm_id: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM swarm_members WHERE swarm_id = ?1", [swarm_id])?;
    tx.execute("DELETE FROM swarm_invites WHERE swarm_id = ?1", [swarm_id])?;
    tx.execute("DELETE FROM swarms WHERE swarm_id = ?1", [swarm_id])?;
    Ok(())
}

fn apply(tx: &Transaction<'_>, change: &MembershipChange) -> Result<(), StoreError> {
    match change {
        MembershipChange::Nothing => {}
        MembershipChange::Add(member) => insert_member(tx, member)?,
        MembershipChange::Remove { swarm_id, agent_id } => {
            tx.execute("DELETE FROM swarm_members WHERE swarm_id = ?1 AND agent_id = ?2", [swarm_id, agent_id])?;
        }
        MembershipChange::Forget { swarm_id } => forget(tx, swarm_id)?,
        MembershipChange::SetMaster { swarm_id, agent_id } => {
            tx.execute("UPDATE swarms SET master = ?2 WHERE swarm_id = ?1", [swarm_id, agent_id])?;
            // Invites are the master's: a former master's stop admitting.
            tx.execute("DELETE FROM swarm_invites WHERE swarm_id = ?1", [swarm_id])?;
        }
        MembershipChange::MuteMember { swarm_id, agent_id, muted } => {
            tx.execute(
                "UPDATE swarm_members SET muted = ?3 WHERE swarm_id = ?1 AND agent_id = ?2",
                params![swarm_id, agent_id, muted],
            )?;
        }
        MembershipChange::MuteSwarm { swarm_id, muted } => {
            tx.execute("UPDATE swarms SET muted = ?2 WHERE swarm_id = ?1", params![swarm_id, muted])?;
        }
    }
    Ok(())
}

fn enqueue(tx: &Transaction<'_>, rows: &[NewOutbox], now: i64) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO swarm_outbox (message_id, peer, endpoint, scheme, system, body, next_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?;
    let mut sent = tx.prepare_cached("INSERT OR IGNORE INTO swarm_sent (message_id, peer, at) VALUES (?1, ?2, ?3)")?;
    for row in rows {
        stmt.execute(params![row.message_id, row.peer, row.endpoint, row.scheme, row.system, row.body, now])?;
        if row.track {
            sent.execute(params![row.message_id, row.peer, now])?;
        }
    }
    Ok(())
}

fn outbox_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRecord> {
    Ok(OutboxRecord {
        id: row.get(0)?,
        message_id: row.get(1)?,
        peer: row.get(2)?,
        endpoint: row.get(3)?,
        scheme: row.get(4)?,
        system: row.get(5)?,
        body: row.get(6)?,
        attempts: row.get(7)?,
        next_at: row.get(8)?,
        created_at: row.get(9)?,
        last_error: row.get(10)?,
        dead: row.get(11)?,
    })
}

const INBOX_COLUMNS: &str = "seq, message_id, swarm_id, sender, recipient, type, content, wire, muted, received_at";

fn inbound_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InboundRecord> {
    Ok(InboundRecord {
        seq: row.get(0)?,
        message_id: row.get(1)?,
        swarm_id: row.get(2)?,
        sender: row.get(3)?,
        recipient: row.get(4)?,
        kind: row.get(5)?,
        content: row.get(6)?,
        wire: row.get(7)?,
        muted: row.get(8)?,
        received_at: row.get(9)?,
    })
}

const OUTBOX_COLUMNS: &str =
    "id, message_id, peer, endpoint, scheme, system, body, attempts, next_at, created_at, last_error, dead";

impl Store {
    /// Records a swarm and its members as they are now (creating or joining it), together
    /// with messages to send about it.
    pub async fn swarm_save(
        &self,
        swarm: SwarmRecord,
        members: Vec<MemberRecord>,
        outbox: Vec<NewOutbox>,
    ) -> Result<(), StoreError> {
        self.write(move |ctx| {
            let tx = ctx.tx();
            forget(tx, &swarm.swarm_id)?;
            tx.prepare_cached(
                "INSERT INTO swarms (swarm_id, name, master, muted, joined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![swarm.swarm_id, swarm.name, swarm.master, swarm.muted, swarm.joined_at])?;
            for member in &members {
                insert_member(tx, member)?;
            }
            enqueue(tx, &outbox, super::now_ms())
        })
        .await
    }

    /// A swarm and its members.
    pub async fn swarm(&self, swarm_id: &str) -> Result<Option<(SwarmRecord, Vec<MemberRecord>)>, StoreError> {
        let id = swarm_id.to_owned();
        self.read(move |conn| {
            let swarm = conn
                .prepare_cached("SELECT swarm_id, name, master, muted, joined_at FROM swarms WHERE swarm_id = ?1")?
                .query_row([&id], swarm_row)
                .optional()?;
            match swarm {
                Some(swarm) => Ok(Some((swarm, members_of(conn, &id)?))),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every swarm this host is in.
    pub async fn swarms(&self) -> Result<Vec<SwarmRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT swarm_id, name, master, muted, joined_at FROM swarms ORDER BY joined_at")?;
            let rows = stmt.query_map([], swarm_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Applies a local membership change and queues the messages announcing it.
    pub async fn swarm_change(&self, change: MembershipChange, outbox: Vec<NewOutbox>) -> Result<(), StoreError> {
        self.write(move |ctx| {
            apply(ctx.tx(), &change)?;
            enqueue(ctx.tx(), &outbox, super::now_ms())
        })
        .await
    }

    /// Remembers an invite this host issued (by the token's sha256), so its uses can be counted.
    pub async fn swarm_record_invite(
        &self,
        token_sha256: String,
        swarm_id: String,
        max_uses: Option<u64>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let max_uses = max_uses.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.write(move |ctx| {
            ctx.tx()
                .prepare_cached(
                    "INSERT INTO swarm_invites (token_sha256, swarm_id, max_uses, expires_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![token_sha256, swarm_id, max_uses, expires_at, super::now_ms()])?;
            Ok(())
        })
        .await
    }

    /// Admits `member` with the invite whose token hashes to `token_sha256`: checks that
    /// `issuer` (this host) is still the swarm's master, the invite's uses, and that the agent
    /// is not a member yet, then adds it, counts the use and queues what
    /// `announce` makes of the members as they were (the `member_joined` broadcasts) — all in
    /// one transaction, or nothing.
    pub async fn swarm_admit<F>(
        &self,
        issuer: String,
        token_sha256: String,
        member: MemberRecord,
        announce: F,
    ) -> Result<Admission, StoreError>
    where
        F: FnOnce(&[MemberRecord]) -> Vec<NewOutbox> + Send + 'static,
    {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let master: Option<String> = tx
                .prepare_cached("SELECT master FROM swarms WHERE swarm_id = ?1")?
                .query_row([&member.swarm_id], |r| r.get(0))
                .optional()?;
            match master {
                None => return Ok(Admission::UnknownSwarm),
                Some(master) if master != issuer => return Ok(Admission::NotMaster(master)),
                Some(_) => {}
            }
            let invite: Option<(String, Option<i64>, i64)> = tx
                .prepare_cached("SELECT swarm_id, max_uses, uses FROM swarm_invites WHERE token_sha256 = ?1")?
                .query_row([&token_sha256], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((invite_swarm, max_uses, uses)) = invite else { return Ok(Admission::UnknownInvite) };
            if invite_swarm != member.swarm_id {
                return Ok(Admission::UnknownInvite);
            }
            if max_uses.is_some_and(|max| uses >= max) {
                return Ok(Admission::Exhausted(u64::try_from(uses).unwrap_or_default()));
            }
            let before = members_of(tx, &member.swarm_id)?;
            if before.iter().any(|m| m.agent_id == member.agent_id) {
                return Ok(Admission::AlreadyMember);
            }
            let outbox = announce(&before);
            insert_member(tx, &member)?;
            tx.execute("UPDATE swarm_invites SET uses = uses + 1 WHERE token_sha256 = ?1", [&token_sha256])?;
            enqueue(tx, &outbox, super::now_ms())?;
            let mut after = before;
            after.push(member);
            Ok(Admission::Admitted(after))
        })
        .await
    }

    /// Takes a verified message: remembers its id (per sender: a member re-sending another's
    /// message id cannot make the real one a "duplicate") until `seen_until`, stores it in the inbox
    /// and applies `change`, in one transaction. `None` when the id was seen before (a replay):
    /// then nothing is written.
    pub async fn swarm_accept(
        &self,
        message: InboundRecord,
        seen_until: i64,
        change: MembershipChange,
    ) -> Result<Option<i64>, StoreError> {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let fresh = tx
                .prepare_cached(
                    "INSERT INTO swarm_seen (sender, message_id, until) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .execute(params![message.sender, message.message_id, seen_until])?;
            if fresh == 0 {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT INTO swarm_inbox (message_id, swarm_id, sender, recipient, type, content, wire, muted, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                message.message_id,
                message.swarm_id,
                message.sender,
                message.recipient,
                message.kind,
                message.content,
                message.wire,
                message.muted,
                message.received_at
            ])?;
            let seq = tx.last_insert_rowid();
            apply(tx, &change)?;
            Ok(Some(seq))
        })
        .await
    }

    /// Received messages after `after_seq`, oldest first; muted ones only with `muted`.
    pub async fn swarm_inbox(
        &self,
        swarm_id: Option<String>,
        after_seq: i64,
        limit: u32,
        muted: bool,
    ) -> Result<Vec<InboundRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INBOX_COLUMNS} FROM swarm_inbox WHERE seq > ?1 AND (?2 IS NULL OR swarm_id = ?2) AND (?3 OR muted = 0) \
                 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![after_seq, swarm_id, muted, limit], inbound_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Messages to this host's agents (recipient `<host>/<agent>`) not yet handled to the end
    /// (run and answered, or delivered and reported), oldest first, at most `limit`: what a
    /// restart hands over again (see `asp::remote`).
    pub async fn swarm_unhandled(&self, limit: u32) -> Result<Vec<InboundRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INBOX_COLUMNS} FROM swarm_inbox WHERE handled = 0 AND instr(recipient, '/') > 0 AND type = 'message' \
                 ORDER BY seq LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], inbound_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Marks an inbox message handled to the end (fire and forget: the worst a lost mark costs
    /// is one more hand-over after a restart, which dedupes).
    pub fn swarm_handled(&self, seq: i64) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.write(move |ctx| {
            ctx.tx().prepare_cached("UPDATE swarm_inbox SET handled = 1 WHERE seq = ?1")?.execute([seq])?;
            Ok(())
        })
    }

    /// The contents of corral stage reports about `message_id` in the inbox, oldest first —
    /// only those sent by a peer the message went to.
    pub async fn swarm_reports(&self, message_id: String) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT i.content FROM swarm_inbox AS i JOIN swarm_sent AS s ON s.message_id = ?1 AND s.peer = i.sender \
                 WHERE json_valid(i.content) AND json_extract(i.content, '$.corral') = 'message.stage' \
                 AND json_extract(i.content, '$.message') = ?1 ORDER BY i.seq",
            )?;
            let rows = stmt.query_map([message_id], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Queues messages for delivery.
    pub async fn outbox_enqueue(&self, rows: Vec<NewOutbox>) -> Result<(), StoreError> {
        self.write(move |ctx| enqueue(ctx.tx(), &rows, super::now_ms())).await
    }

    /// Live outbox rows due at `now`, in queue order, except for a peer whose oldest live row
    /// is not due yet (waiting for a retry): nothing newer overtakes it.
    pub async fn outbox_due(&self, now: i64, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM swarm_outbox AS r WHERE dead = 0 AND next_at <= ?1 \
                 AND NOT EXISTS (SELECT 1 FROM swarm_outbox AS o \
                     WHERE o.peer = r.peer AND o.dead = 0 AND o.id < r.id AND o.next_at > ?1) \
                 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit], outbox_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The outbox rows of one message (one per peer it goes to).
    pub async fn outbox_of(&self, message_id: String) -> Result<Vec<OutboxRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM swarm_outbox WHERE message_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([message_id], outbox_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every outbox row (live ones first), for operators.
    pub async fn outbox_list(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {OUTBOX_COLUMNS} FROM swarm_outbox ORDER BY dead, id LIMIT ?1"))?;
            let rows = stmt.query_map([limit], outbox_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Records what one outbox pass came to, in one op: delivered rows leave the outbox;
    /// failed ones are tried again at their `next_at`, or (`dead`) never again.
    pub async fn outbox_settle(&self, delivered: Vec<i64>, failed: Vec<OutboxFailure>) -> Result<(), StoreError> {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let mut delete = tx.prepare_cached("DELETE FROM swarm_outbox WHERE id = ?1")?;
            for id in delivered {
                delete.execute([id])?;
            }
            let mut update = tx.prepare_cached(
                "UPDATE swarm_outbox SET attempts = attempts + 1, last_error = ?2, next_at = ?3, dead = ?4 WHERE id = ?1",
            )?;
            for f in failed {
                update.execute(params![f.id, f.error, f.next_at, f.dead])?;
            }
            Ok(())
        })
        .await
    }

    /// Deletes, at most `limit` of each, received messages older than `before` that are done
    /// with (anything but a message to an agent not yet handled), dead outbox rows made before
    /// it, and the audit rows of refused ASP requests older than it. Returns how many rows went.
    pub async fn prune_swarm(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let inbox = tx
                .prepare_cached(
                    "DELETE FROM swarm_inbox WHERE seq IN (SELECT seq FROM swarm_inbox WHERE received_at < ?1 \
                     AND (handled = 1 OR instr(recipient, '/') = 0 OR type != 'message') ORDER BY seq LIMIT ?2)",
                )?
                .execute(params![before, limit])?;
            let outbox = tx
                .prepare_cached(
                    "DELETE FROM swarm_outbox WHERE id IN \
                     (SELECT id FROM swarm_outbox WHERE dead = 1 AND created_at < ?1 ORDER BY id LIMIT ?2)",
                )?
                .execute(params![before, limit])?;
            let audit = tx
                .prepare_cached(
                    "DELETE FROM audit WHERE id IN \
                     (SELECT id FROM audit WHERE job_id >= 'asp:' AND job_id < 'asp;' AND at < ?1 LIMIT ?2)",
                )?
                .execute(params![before, limit])?;
            let sent = tx
                .prepare_cached(
                    "DELETE FROM swarm_sent WHERE (message_id, peer) IN \
                     (SELECT message_id, peer FROM swarm_sent WHERE at < ?1 LIMIT ?2)",
                )?
                .execute(params![before, limit])?;
            Ok(inbox + outbox + audit + sent)
        })
        .await
    }

    /// Forgets message ids whose timestamps are too old to be accepted anyway.
    pub async fn swarm_prune_seen(&self, now: i64) -> Result<usize, StoreError> {
        self.write(move |ctx| Ok(ctx.tx().execute("DELETE FROM swarm_seen WHERE until < ?1", [now])?)).await
    }
}

fn swarm_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SwarmRecord> {
    Ok(SwarmRecord {
        swarm_id: row.get(0)?,
        name: row.get(1)?,
        master: row.get(2)?,
        muted: row.get(3)?,
        joined_at: row.get(4)?,
    })
}
