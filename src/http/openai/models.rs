//! `/v1/models` without axum: the model ids a caller may use, as OpenAI lists them.

use super::types::{ListObject, ModelListV1, ModelObject, ModelObjectKind};
use crate::auth::Principal;
use crate::serving::Core;

/// Every model id served; a token limited to some models lists only those.
pub fn list(core: &Core, principal: Option<&Principal>) -> ModelListV1 {
    let permitted = |id: &str| principal.is_none_or(|p| p.may_use(id));
    let data = core
        .registry
        .list()
        .into_iter()
        .filter(|rec| permitted(&rec.id))
        .map(|rec| ModelObject {
            id: rec.id.clone(),
            object: ModelObjectKind::Model,
            created: 0,
            owned_by: "anya".into(),
        })
        .collect();
    ModelListV1 {
        object: ListObject::List,
        data,
    }
}
