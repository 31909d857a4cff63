//! The trainings of this server: their statuses by id, who started each, and the limits on
//! how many run and how many are kept.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Training, MAX_RUNNING};
use crate::auth::{Principal, SCOPE_ADMIN};
use crate::error::{ApiError, ErrorKind};

/// Most trainings whose status is kept (the oldest finished ones are forgotten first).
pub const MAX_KEPT: usize = 256;

/// A training and who started it.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) training: Training,
    /// The principal that started it (`Principal::sub`); `None` when the request had none.
    pub(super) owner: Option<String>,
}

/// Trainings of this server, by id (kept in memory, at most `MAX_KEPT` finished ones).
#[derive(Debug, Default)]
pub struct Trainings {
    pub(super) map: Mutex<HashMap<String, Entry>>,
    pub(super) order: Mutex<std::collections::VecDeque<String>>,
}

impl Trainings {
    /// Record a new running training of `owner`, unless its model is training already or
    /// `MAX_RUNNING` trainings run (checked and inserted under one lock).
    pub(super) fn start(&self, t: Training, owner: Option<String>) -> Result<(), ApiError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let running: Vec<&str> = map
            .values()
            .filter(|e| e.training.status == "running")
            .map(|e| e.training.model.as_str())
            .collect();
        if running.contains(&t.model.as_str()) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("a head for `{}` is training already", t.model),
            ));
        }
        if running.len() >= MAX_RUNNING {
            let mut e = ApiError::new(
                ErrorKind::Unavailable,
                format!("{MAX_RUNNING} trainings are running; try again later"),
            );
            e.retry_after_s = Some(30);
            return Err(e);
        }
        Self::insert(&mut map, &self.order, Entry { training: t, owner });
        Ok(())
    }

    /// Add `entry`, forgetting the oldest finished trainings beyond `MAX_KEPT`.
    pub(super) fn insert(
        map: &mut HashMap<String, Entry>,
        order: &Mutex<std::collections::VecDeque<String>>,
        entry: Entry,
    ) {
        let mut order = order.lock().unwrap_or_else(|e| e.into_inner());
        order.push_back(entry.training.id.clone());
        map.insert(entry.training.id.clone(), entry);
        while order.len() > MAX_KEPT {
            let Some(pos) = order
                .iter()
                .position(|id| map.get(id).is_none_or(|e| e.training.status != "running"))
            else {
                break;
            };
            if let Some(id) = order.remove(pos) {
                map.remove(&id);
            }
        }
    }

    /// Training `id` of `model`, if `who` may see it: its owner, an admin, or anyone when
    /// the server has no principals (`who` is `None`). Another principal's is not found, as
    /// jobs and files are.
    pub fn get(&self, model: &str, id: &str, who: Option<&Principal>) -> Option<Training> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|e| e.training.model == model && visible_to(e.owner.as_deref(), who))
            .map(|e| e.training.clone())
    }

    pub(super) fn update(&self, id: &str, f: impl FnOnce(&mut Training)) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(id) {
            f(&mut e.training);
        }
    }

    pub(super) fn running(&self) -> Vec<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|e| e.training.status == "running")
            .map(|e| e.training.model.clone())
            .collect()
    }
}

/// Whether `who` may see a training started by `owner`: the same principal or an admin (as
/// `JobRecord::visible_to`); without a principal on either side, anyone.
fn visible_to(owner: Option<&str>, who: Option<&Principal>) -> bool {
    match (owner, who) {
        (_, None) => true,
        (owner, Some(who)) => {
            owner.is_none_or(|o| o == who.sub) || who.scopes.iter().any(|s| s == SCOPE_ADMIN)
        }
    }
}
