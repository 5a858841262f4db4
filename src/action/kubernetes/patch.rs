//! `kubernetes.patch`: merge, strategic or JSON patch of a namespaced object.

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec};
use crate::runbook::Risk;

pub struct Patch {
    spec: Spec,
}

impl Patch {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.patch",
            "Patch any namespaced object (merge, strategic merge or JSON patch)",
            Risk::High,
            true,
        )
        .required("api_version", ParamType::String, "e.g. v1 or apps/v1")
        .required("kind", ParamType::String, "e.g. ConfigMap")
        .required("namespace", ParamType::String, "namespace of the object")
        .required("name", ParamType::String, "name of the object")
        .required("patch", ParamType::Object, "the patch document")
        .param(
            "patch_type",
            ParamType::OneOf(&["merge", "strategic", "json"]),
            "merge (default), strategic or json",
        )
        .rbac("*", &["*"], &["get", "patch"])
        .example("api_version: v1\nkind: ConfigMap\nnamespace: shop\nname: pgbouncer\npatch: {data: {max_client_conn: \"400\"}}\n");
        Patch { spec }
    }
}

#[async_trait::async_trait]
impl Action for Patch {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Simulate
    }

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
