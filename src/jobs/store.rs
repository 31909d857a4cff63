//! The jobs' embedded store (`redb`): job records, their inputs, each finished result, and the
//! files of the OpenAI Batch API. Every write is one transaction committed with fsync
//! (`Durability::Immediate`, redb's default), so a result acknowledged here survives `kill -9`.
//! All calls block: callers run them on the blocking pool.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{FileRecord, JobError, JobRecord};

/// Job id → the record (JSON).
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// (job id, index) → the input (JSON).
const INPUTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inputs");
/// (job id, index) → one byte (1: success, 0: error), then the result line (JSON).
const RESULTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("results");
/// File id → its record (JSON).
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// (file id, chunk number) → bytes of an uploaded file.
const FILE_DATA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("file_data");

/// redb's page cache (its read cache and write buffer together; redb's default is 1 GiB, so
/// every page a large upload or job wrote stayed in memory after it). The store is read in
/// order, a page of results or a chunk of a file at a time: a small cache loses little.
const CACHE_BYTES: usize = 32 << 20;

/// Bytes per stored chunk of an uploaded file.
pub const FILE_CHUNK: usize = 1 << 20;

/// One stored result.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub index: u64,
    pub ok: bool,
    pub line: Vec<u8>,
}

pub struct Store {
    db: redb::Database,
}

fn db_err(e: impl Into<redb::Error>) -> JobError {
    JobError::Store(e.into().to_string())
}

fn json_err(e: serde_json::Error) -> JobError {
    JobError::Store(format!("a stored record does not parse: {e}"))
}

impl Store {
    /// The store in `dir` (created if absent), or one in memory.
    pub fn open(dir: Option<&Path>) -> Result<Self, JobError> {
        let db = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| JobError::Store(format!("{}: {e}", dir.display())))?;
                redb::Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .create(dir.join("jobs.redb"))
                    .map_err(db_err)?
            }
            None => redb::Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(db_err)?,
        };
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(JOBS).map_err(db_err)?;
            txn.open_table(INPUTS).map_err(db_err)?;
            txn.open_table(RESULTS).map_err(db_err)?;
            txn.open_table(FILES).map_err(db_err)?;
            txn.open_table(FILE_DATA).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Store a new job with all of its inputs, in one transaction.
    pub fn create_job(&self, job: &JobRecord, inputs: &[Vec<u8>]) -> Result<(), JobError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(db_err)?;
            let record = serde_json::to_vec(job).map_err(json_err)?;
            jobs.insert(job.id.as_str(), record.as_slice())
                .map_err(db_err)?;
            let mut table = txn.open_table(INPUTS).map_err(db_err)?;
            for (i, input) in inputs.iter().enumerate() {
                table
                    .insert((job.id.as_str(), i as u64), input.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let jobs = txn.open_table(JOBS).map_err(db_err)?;
        match jobs.get(id).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(json_err),
            None => Ok(None),
        }
    }

    /// Every job record (oldest first by id order is not creation order: callers sort).
    pub fn jobs(&self) -> Result<Vec<JobRecord>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let jobs = txn.open_table(JOBS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in jobs.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
        }
        Ok(out)
    }

    /// Change a job's record under the write lock: `change` sees the stored record.
    pub fn update_job(
        &self,
        id: &str,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<JobRecord, JobError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut jobs = txn.open_table(JOBS).map_err(db_err)?;
            let mut record: JobRecord = match jobs.get(id).map_err(db_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(json_err)?,
                None => return Err(JobError::NotFound(id.to_string())),
            };
            change(&mut record);
            let bytes = serde_json::to_vec(&record).map_err(json_err)?;
            jobs.insert(id, bytes.as_slice()).map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Indices below `total` without a stored result, in order.
    pub fn missing(&self, id: &str, total: u64) -> Result<Vec<u64>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let results = txn.open_table(RESULTS).map_err(db_err)?;
        let mut out = Vec::new();
        let mut next = 0u64;
        for entry in results.range((id, 0u64)..(id, total)).map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let (_, i) = k.value();
            out.extend(next..i);
            next = i + 1;
        }
        out.extend(next..total);
        Ok(out)
    }

    /// The inputs at `indices`.
    pub fn inputs(&self, id: &str, indices: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let inputs = txn.open_table(INPUTS).map_err(db_err)?;
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            match inputs.get((id, i)).map_err(db_err)? {
                Some(v) => out.push((i, v.value().to_vec())),
                None => return Err(JobError::Store(format!("input {i} of job {id} is missing"))),
            }
        }
        Ok(out)
    }

    /// Store finished results and count them on the job, in one transaction; a result already
    /// stored (a chunk recomputed after a restart) is kept and not counted twice.
    pub fn put_results(&self, id: &str, results: &[StoredResult]) -> Result<JobRecord, JobError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(RESULTS).map_err(db_err)?;
            let (mut ok, mut failed) = (0u64, 0u64);
            for r in results {
                if table.get((id, r.index)).map_err(db_err)?.is_some() {
                    continue;
                }
                let mut value = Vec::with_capacity(r.line.len() + 1);
                value.push(u8::from(r.ok));
                value.extend_from_slice(&r.line);
                table
                    .insert((id, r.index), value.as_slice())
                    .map_err(db_err)?;
                if r.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            let mut jobs = txn.open_table(JOBS).map_err(db_err)?;
            let mut record: JobRecord = match jobs.get(id).map_err(db_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(json_err)?,
                None => return Err(JobError::NotFound(id.to_string())),
            };
            record.completed += ok;
            record.failed += failed;
            let bytes = serde_json::to_vec(&record).map_err(json_err)?;
            jobs.insert(id, bytes.as_slice()).map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Up to `limit` stored results from index `from` on, in index order.
    pub fn results(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredResult>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(RESULTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((id, from)..=(id, u64::MAX)).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let bytes = v.value();
            if let Some((&flag, line)) = bytes.split_first() {
                out.push(StoredResult {
                    index: k.value().1,
                    ok: flag == 1,
                    line: line.to_vec(),
                });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Store a file (its record and its bytes, read from `data` one chunk at a time) in one
    /// transaction.
    pub fn put_file(
        &self,
        file: &FileRecord,
        mut data: impl std::io::Read,
    ) -> Result<(), JobError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut files = txn.open_table(FILES).map_err(db_err)?;
            let record = serde_json::to_vec(file).map_err(json_err)?;
            files
                .insert(file.id.as_str(), record.as_slice())
                .map_err(db_err)?;
            let mut chunks = txn.open_table(FILE_DATA).map_err(db_err)?;
            let mut buf = Vec::with_capacity(FILE_CHUNK);
            for n in 0u64.. {
                buf.clear();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(&mut data, FILE_CHUNK as u64),
                    &mut buf,
                )
                .map_err(|e| JobError::Store(format!("reading the upload: {e}")))?;
                if buf.is_empty() {
                    break;
                }
                chunks
                    .insert((file.id.as_str(), n), buf.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    pub fn file(&self, id: &str) -> Result<Option<FileRecord>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let files = txn.open_table(FILES).map_err(db_err)?;
        match files.get(id).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(json_err),
            None => Ok(None),
        }
    }

    pub fn files(&self) -> Result<Vec<FileRecord>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let files = txn.open_table(FILES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in files.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
        }
        Ok(out)
    }

    /// Chunk `n` of an uploaded file's bytes (`None` past its end).
    pub fn file_chunk(&self, id: &str, n: u64) -> Result<Option<Vec<u8>>, JobError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let chunks = txn.open_table(FILE_DATA).map_err(db_err)?;
        Ok(chunks
            .get((id, n))
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }
}
