//! Fleet mode (`jobs.redis_url`): the jobs of every replica live in one Redis, and their work
//! is one queue. A job's record, inputs and results are Redis keys; its chunks are entries of a
//! Redis Stream read by a consumer group, one consumer per replica process. A replica takes a
//! chunk (`XREADGROUP`), computes it, stores its results and marks it settled in one script
//! (results already stored are kept and not counted twice), then acknowledges and deletes the
//! entry. A chunk taken by a replica that dies stays pending under its consumer; once idle for
//! `jobs.claim_idle_ms` any live replica claims it (`XAUTOCLAIM`) and computes it. Live
//! replicas refresh their chunks in flight (`XCLAIM … JUSTID`) so slow chunks are not taken from
//! them. The replica whose settled chunk is the job's last one finishes the job (a
//! compare-and-set on the record) and sends its webhook.
//!
//! Keys (under `jobs.redis_prefix`): `jobs` (set of ids), `job:{id}` (record, JSON),
//! `job:{id}:n` (counts: completed, failed, total, chunks), `job:{id}:in` and `job:{id}:out`
//! (hashes by input index), `job:{id}:done` (settled chunks), `job:{id}:hook` (webhook lease),
//! `files`, `file:{id}`, `file:{id}:data`, and the stream `chunks` with group `workers`.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadReply};
use redis::AsyncCommands;

use super::store::{StoredResult, FILE_CHUNK};
use super::{FileRecord, JobError, JobRecord};

const GROUP: &str = "workers";

/// Replace a record only if it is still the one read (optimistic concurrency).
const CAS_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Store a chunk's results (keeping any already stored), count the new ones and mark the chunk
/// settled; answers the number of settled chunks. A stored result is its flag (`1` success,
/// `0` error) followed by its line.
/// KEYS: out, n, done. ARGV: chunk start, then (index, ok, line) triples.
const PUT_LUA: &str = r#"
local ok, failed = 0, 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1] .. ARGV[i + 2]) == 1 then
    if ARGV[i + 1] == '1' then ok = ok + 1 else failed = failed + 1 end
  end
end
if ok > 0 then redis.call('HINCRBY', KEYS[2], 'completed', ok) end
if failed > 0 then redis.call('HINCRBY', KEYS[2], 'failed', failed) end
redis.call('SADD', KEYS[3], ARGV[1])
return redis.call('SCARD', KEYS[3])
"#;

/// One chunk of a job, as queued: inputs `from..to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The stream entry's id.
    pub entry: String,
    pub job: String,
    pub from: u64,
    pub to: u64,
}

impl Chunk {
    fn parse(e: &StreamId) -> Option<Self> {
        Some(Self {
            entry: e.id.clone(),
            job: e.get("job")?,
            from: e.get("from")?,
            to: e.get("to")?,
        })
    }
}

pub struct Shared {
    conn: ConnectionManager,
    /// A connection of its own for the blocking `XREADGROUP`, so it never holds up the others.
    reader: ConnectionManager,
    prefix: String,
    /// This process's consumer name in the group (unique per start).
    consumer: String,
    cas: redis::Script,
    put: redis::Script,
}

fn rerr(e: redis::RedisError) -> JobError {
    JobError::Store(format!("redis: {e}"))
}

fn json_err(e: serde_json::Error) -> JobError {
    JobError::Store(format!("a stored record does not parse: {e}"))
}

/// Longest wait of one blocking read of the stream.
pub const READ_BLOCK_MS: u64 = 1_000;

impl Shared {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, JobError> {
        let client = redis::Client::open(url).map_err(rerr)?;
        let config = |response: Duration| {
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1))
        };
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            config(Duration::from_secs(30)),
        )
        .map_err(rerr)?;
        let reader = ConnectionManager::new_lazy_with_config(
            client,
            config(Duration::from_millis(READ_BLOCK_MS + 10_000)),
        )
        .map_err(rerr)?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "anya".into());
        let consumer = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            conn,
            reader,
            prefix: prefix.to_string(),
            consumer,
            cas: redis::Script::new(CAS_LUA),
            put: redis::Script::new(PUT_LUA),
        })
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn job_key(&self, id: &str, part: &str) -> String {
        format!("{}job:{id}{part}", self.prefix)
    }

    fn stream(&self) -> String {
        self.key("chunks")
    }

    fn c(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Create the consumer group (and stream) if absent. Starting at `0`: entries added before
    /// the group existed are worked too (settled entries are deleted, so nothing is redone).
    pub async fn ensure_group(&self) -> Result<(), JobError> {
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.c())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(rerr(e)),
        }
    }

    /// Store a new job and its inputs, then queue its chunks of `chunk` inputs (a chunk is
    /// queued only once everything it reads is stored).
    pub async fn create_job(
        &self,
        job: &JobRecord,
        inputs: &[Vec<u8>],
        chunk: usize,
    ) -> Result<(), JobError> {
        let id = job.id.as_str();
        let chunk = chunk.max(1);
        let total = inputs.len() as u64;
        let chunks = total.div_ceil(chunk as u64);
        let mut conn = self.c();
        let in_key = self.job_key(id, ":in");
        for (b, batch) in inputs.chunks(2_000).enumerate() {
            let mut p = redis::pipe();
            for (k, input) in batch.iter().enumerate() {
                p.hset(&in_key, (b * 2_000 + k) as u64, input.as_slice())
                    .ignore();
            }
            p.query_async::<()>(&mut conn).await.map_err(rerr)?;
        }
        let record = serde_json::to_vec(job).map_err(json_err)?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                self.job_key(id, ":n"),
                &[
                    ("completed", 0u64),
                    ("failed", 0),
                    ("total", total),
                    ("chunks", chunks),
                ],
            )
            .ignore()
            .set(self.job_key(id, ""), record)
            .ignore()
            .sadd(self.key("jobs"), id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(rerr)?;
        let stream = self.stream();
        let starts: Vec<u64> = (0..chunks).map(|c| c * chunk as u64).collect();
        for batch in starts.chunks(1_000) {
            let mut p = redis::pipe();
            for &from in batch {
                let to = (from + chunk as u64).min(total);
                p.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("job")
                    .arg(id)
                    .arg("from")
                    .arg(from)
                    .arg("to")
                    .arg(to)
                    .ignore();
            }
            p.query_async::<()>(&mut conn).await.map_err(rerr)?;
        }
        Ok(())
    }

    /// The raw record and its counts.
    async fn raw(&self, id: &str) -> Result<Option<(Vec<u8>, JobRecord)>, JobError> {
        let (raw, counts): (Option<Vec<u8>>, HashMap<String, u64>) = redis::pipe()
            .get(self.job_key(id, ""))
            .hgetall(self.job_key(id, ":n"))
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let mut record: JobRecord = serde_json::from_slice(&raw).map_err(json_err)?;
        record.completed = counts.get("completed").copied().unwrap_or(0);
        record.failed = counts.get("failed").copied().unwrap_or(0);
        Ok(Some((raw, record)))
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, JobError> {
        Ok(self.raw(id).await?.map(|(_, r)| r))
    }

    pub async fn jobs(&self) -> Result<Vec<JobRecord>, JobError> {
        let ids: Vec<String> = self.c().smembers(self.key("jobs")).await.map_err(rerr)?;
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(500) {
            let mut p = redis::pipe();
            for id in batch {
                p.get(self.job_key(id, "")).hgetall(self.job_key(id, ":n"));
            }
            let replies: Vec<redis::Value> = p.query_async(&mut self.c()).await.map_err(rerr)?;
            for pair in replies.chunks(2) {
                let [raw, counts] = pair else { continue };
                let Ok(Some(raw)) = redis::from_redis_value_ref::<Option<Vec<u8>>>(raw) else {
                    continue;
                };
                let counts: HashMap<String, u64> = redis::from_redis_value_ref(counts)
                    .map_err(|e| JobError::Store(e.to_string()))?;
                let mut record: JobRecord = serde_json::from_slice(&raw).map_err(json_err)?;
                record.completed = counts.get("completed").copied().unwrap_or(0);
                record.failed = counts.get("failed").copied().unwrap_or(0);
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Change a record (compare-and-set, retried when another replica changed it meanwhile);
    /// answers the record before and after.
    pub async fn update_job(
        &self,
        id: &str,
        change: &(dyn Fn(&mut JobRecord) + Send + Sync),
    ) -> Result<(JobRecord, JobRecord), JobError> {
        for _ in 0..100 {
            let Some((raw, before)) = self.raw(id).await? else {
                return Err(JobError::NotFound(id.to_string()));
            };
            let mut after = before.clone();
            change(&mut after);
            if after == before {
                return Ok((before, after));
            }
            let bytes = serde_json::to_vec(&after).map_err(json_err)?;
            let swapped: i64 = self
                .cas
                .key(self.job_key(id, ""))
                .arg(raw)
                .arg(bytes)
                .invoke_async(&mut self.c())
                .await
                .map_err(rerr)?;
            match swapped {
                1 => return Ok((before, after)),
                -1 => return Err(JobError::NotFound(id.to_string())),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        Err(JobError::Store(format!(
            "job {id}: the record kept changing under an update"
        )))
    }

    /// Chunks settled and chunks in all.
    pub async fn progress(&self, id: &str) -> Result<(u64, u64), JobError> {
        let (settled, chunks): (u64, Option<u64>) = redis::pipe()
            .scard(self.job_key(id, ":done"))
            .hget(self.job_key(id, ":n"), "chunks")
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        Ok((settled, chunks.unwrap_or(0)))
    }

    pub async fn is_settled(&self, id: &str, from: u64) -> Result<bool, JobError> {
        self.c()
            .sismember(self.job_key(id, ":done"), from)
            .await
            .map_err(rerr)
    }

    /// The inputs `from..to`.
    pub async fn inputs(
        &self,
        id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, JobError> {
        let indices: Vec<u64> = (from..to).collect();
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let got: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.job_key(id, ":in"))
            .arg(&indices)
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        indices
            .into_iter()
            .zip(got)
            .map(|(i, v)| {
                v.map(|v| (i, v))
                    .ok_or_else(|| JobError::Store(format!("input {i} of job {id} is missing")))
            })
            .collect()
    }

    /// Store a chunk's results and mark it settled; answers (settled chunks, chunks in all).
    pub async fn put_results(
        &self,
        id: &str,
        chunk_from: u64,
        results: &[StoredResult],
    ) -> Result<(u64, u64), JobError> {
        let mut inv = self.put.prepare_invoke();
        inv.key(self.job_key(id, ":out"))
            .key(self.job_key(id, ":n"))
            .key(self.job_key(id, ":done"))
            .arg(chunk_from);
        for r in results {
            inv.arg(r.index)
                .arg(if r.ok { "1" } else { "0" })
                .arg(r.line.as_slice());
        }
        let settled: u64 = inv.invoke_async(&mut self.c()).await.map_err(rerr)?;
        let (_, chunks) = self.progress(id).await?;
        Ok((settled, chunks))
    }

    /// Up to `limit` stored results from index `from` on, in index order.
    pub async fn results(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredResult>, JobError> {
        let total: Option<u64> = self
            .c()
            .hget(self.job_key(id, ":n"), "total")
            .await
            .map_err(rerr)?;
        let total = total.unwrap_or(0);
        let key = self.job_key(id, ":out");
        let mut out = Vec::new();
        let mut at = from;
        while at < total && out.len() < limit {
            let to = (at + 1_024).min(total);
            let indices: Vec<u64> = (at..to).collect();
            let got: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&indices)
                .query_async(&mut self.c())
                .await
                .map_err(rerr)?;
            for (i, v) in indices.into_iter().zip(got) {
                if let Some((&flag, line)) = v.as_deref().and_then(<[u8]>::split_first) {
                    out.push(StoredResult {
                        index: i,
                        ok: flag == b'1',
                        line: line.to_vec(),
                    });
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            at = to;
        }
        Ok(out)
    }

    /// Store a file: its bytes, read from `data` one chunk at a time (one chunk in memory),
    /// then its record (so it is listed only once whole).
    pub async fn put_file(&self, file: &FileRecord, data: std::fs::File) -> Result<(), JobError> {
        let mut conn = self.c();
        let data_key = self.key(&format!("file:{}:data", file.id));
        use tokio::io::AsyncReadExt;
        let mut data = tokio::fs::File::from_std(data);
        let mut buf = Vec::with_capacity(FILE_CHUNK);
        for n in 0u64.. {
            buf.clear();
            (&mut data)
                .take(FILE_CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| JobError::Store(format!("reading the upload: {e}")))?;
            if buf.is_empty() {
                break;
            }
            conn.hset::<_, _, _, ()>(&data_key, n, &buf)
                .await
                .map_err(rerr)?;
        }
        let record = serde_json::to_vec(file).map_err(json_err)?;
        redis::pipe()
            .atomic()
            .set(self.key(&format!("file:{}", file.id)), record)
            .ignore()
            .sadd(self.key("files"), &file.id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(rerr)
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileRecord>, JobError> {
        let raw: Option<Vec<u8>> = self
            .c()
            .get(self.key(&format!("file:{id}")))
            .await
            .map_err(rerr)?;
        raw.map(|r| serde_json::from_slice(&r).map_err(json_err))
            .transpose()
    }

    pub async fn files(&self) -> Result<Vec<FileRecord>, JobError> {
        let ids: Vec<String> = self.c().smembers(self.key("files")).await.map_err(rerr)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(f) = self.file(&id).await? {
                out.push(f);
            }
        }
        Ok(out)
    }

    pub async fn file_chunk(&self, id: &str, n: u64) -> Result<Option<Vec<u8>>, JobError> {
        self.c()
            .hget(self.key(&format!("file:{id}:data")), n)
            .await
            .map_err(rerr)
    }

    /// New chunks for this consumer: up to `count`, waiting up to `READ_BLOCK_MS` for one.
    pub async fn read(&self, count: usize) -> Result<Vec<Chunk>, JobError> {
        let reply: Result<Option<StreamReadReply>, redis::RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(self.stream())
            .arg(">")
            .query_async(&mut self.reader.clone())
            .await;
        let reply = match reply {
            Ok(r) => r,
            // Redis lost the group (restarted without persistence): make it again.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(rerr(e)),
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .iter()
                    .flat_map(|k| k.ids.iter())
                    .filter_map(Chunk::parse)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Claim up to `count` chunks another consumer took and left idle for `idle_ms` (it died,
    /// or stopped): they are this consumer's now.
    pub async fn claim_stale(&self, count: usize, idle_ms: u64) -> Result<Vec<Chunk>, JobError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        Ok(reply.claimed.iter().filter_map(Chunk::parse).collect())
    }

    /// Reset the idle time of chunks this consumer is working on, so no one claims them.
    pub async fn touch(&self, entries: &[String]) -> Result<(), JobError> {
        if entries.is_empty() {
            return Ok(());
        }
        redis::cmd("XCLAIM")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(entries)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut self.c())
            .await
            .map_err(rerr)?;
        Ok(())
    }

    /// Acknowledge a chunk and drop it from the stream.
    pub async fn ack(&self, entry: &str) -> Result<(), JobError> {
        redis::pipe()
            .xack(self.stream(), GROUP, &[entry])
            .ignore()
            .xdel(self.stream(), &[entry])
            .ignore()
            .query_async::<()>(&mut self.c())
            .await
            .map_err(rerr)
    }

    /// Forget consumers of past processes that hold nothing and have been idle for `idle_ms`.
    pub async fn forget_idle_consumers(&self, idle_ms: u64) -> Result<(), JobError> {
        let info: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.stream())
            .arg(GROUP)
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        for c in info.consumers {
            if c.pending == 0 && c.idle as u64 > idle_ms && c.name != self.consumer {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(self.stream())
                    .arg(GROUP)
                    .arg(&c.name)
                    .query_async::<i64>(&mut self.c())
                    .await
                    .map_err(rerr)?;
            }
        }
        Ok(())
    }

    /// Take the right to deliver a job's webhook for `ttl` (one replica at a time).
    pub async fn lease_webhook(&self, id: &str, ttl: Duration) -> Result<bool, JobError> {
        let got: Option<String> = redis::cmd("SET")
            .arg(self.job_key(id, ":hook"))
            .arg(&self.consumer)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.c())
            .await
            .map_err(rerr)?;
        Ok(got.is_some())
    }

    pub async fn release_webhook(&self, id: &str) -> Result<(), JobError> {
        self.c()
            .del::<_, ()>(self.job_key(id, ":hook"))
            .await
            .map_err(rerr)
    }
}
