//! `kubernetes.patch`: merge, strategic or JSON patch of a namespaced object,
//! through the dynamic API (the resource is named from `api_version` and
//! `kind`; no discovery round-trip).

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch as KubePatch};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLUSTER_DOC, api_error, check_name, check_namespace, patch_params, plural, resource_name};
use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, StaticWith, input, lenient};
use crate::runbook::Risk;
use crate::runbook::template::Tpl;

const JSON_PATCH: &str = "application/json-patch+json";

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
        .param("cluster", ParamType::String, CLUSTER_DOC)
        .required("kind", ParamType::String, "e.g. ConfigMap")
        .required("namespace", ParamType::String, "namespace of the object")
        .required("name", ParamType::String, "name of the object")
        .required("patch", ParamType::Object, "the patch document")
        .param(
            "patch_type",
            ParamType::OneOf(&["merge", "strategic", "json"]),
            "merge (default), strategic or json (a json patch that appends, moves, copies or removes is not idempotent)",
        )
        .rbac("*", &["*"], &["get", "patch"])
        .example("api_version: v1\nkind: ConfigMap\nnamespace: shop\nname: pgbouncer\npatch: {data: {max_client_conn: \"400\"}}\n");
        Patch { spec }
    }
}

impl Default for Patch {
    fn default() -> Self {
        Self::new()
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

    /// A merge patch sets fields: applying it twice is applying it once. A
    /// JSON patch is only when every operation is: `replace`, `test`, or an
    /// `add` to a named member. Appending (`add` to `…/-`), `move`, `copy` and
    /// `remove` (the second fails) are not, nor is a patch whose operations
    /// are templated (unknown until run).
    fn step_idempotent(&self, with: StaticWith<'_>) -> bool {
        let json = with.get("patch_type").and_then(|t| t.literal()).is_some_and(|t| t == "json");
        if !json {
            return true;
        }
        let Some(Tpl::List(ops)) = with.get("patch") else { return false };
        ops.iter().all(|op| {
            let Tpl::Map(op) = op else { return false };
            let field = |k: &str| op.get(k).and_then(Tpl::literal);
            match (field("op"), field("path")) {
                (Some(o), _) if o == "replace" || o == "test" => true,
                (Some(o), Some(Value::String(path))) if o == "add" => !path.ends_with("/-"),
                _ => false,
            }
        })
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            api_version,
            kind,
            namespace,
            name,
            patch,
            patch_type,
            cluster,
        } = input(input_value)?;
        let ar = api_resource(&api_version, &kind)?;
        check_namespace("namespace", &namespace)?;
        check_name("name", &name)?;
        let patch_type = PatchType::parse(patch_type.as_deref())?;
        patch_type.check(&patch)?;
        let what = format!("{kind} {namespace}/{name}");
        let needs = format!("patch on {} in namespace {namespace}", resource_name(&ar));
        let cluster = cx.deps.kube.resolve(cluster.as_deref())?;
        let client = super::client(cx, Some(cluster)).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        let pp = patch_params(cx.dry_run);

        let patched = match patch_type {
            PatchType::Merge => api.patch(&name, &pp, &KubePatch::Merge(&patch)).await,
            PatchType::Strategic => api.patch(&name, &pp, &KubePatch::Strategic(&patch)).await,
            PatchType::Json => {
                // kube types JSON patches only behind its `jsonpatch` feature;
                // the request is the same as a merge patch but for the media
                // type, so build that one and relabel it.
                let mut request = kube::core::Request::new(api.resource_url())
                    .patch(&name, &pp, &KubePatch::Merge(&patch))
                    .map_err(|e| ActionError::Failed(format!("cannot build the patch request: {e}")))?;
                let media = JSON_PATCH
                    .parse()
                    .map_err(|e| ActionError::Failed(format!("cannot build the patch request: {e}")))?;
                request.headers_mut().insert("content-type", media);
                client.request::<DynamicObject>(request).await
            }
        }
        .map_err(|e| api_error(&e, &what, &needs))?;

        Ok(json!({
            "cluster": cluster,
            "api_version": api_version,
            "kind": kind,
            "namespace": namespace,
            "name": name,
            "patch_type": patch_type.word(),
            "resourceVersion": patched.metadata.resource_version,
            "generation": patched.metadata.generation,
            "dry_run": cx.dry_run,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    api_version: String,
    #[serde(deserialize_with = "lenient::string")]
    kind: String,
    #[serde(deserialize_with = "lenient::string")]
    namespace: String,
    #[serde(deserialize_with = "lenient::string")]
    name: String,
    patch: Value,
    #[serde(default)]
    patch_type: Option<String>,
    #[serde(default, deserialize_with = "super::opt_cluster")]
    cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    fn parse(v: Option<&str>) -> Result<PatchType, ActionError> {
        match v.unwrap_or("merge") {
            "merge" => Ok(PatchType::Merge),
            "strategic" => Ok(PatchType::Strategic),
            "json" => Ok(PatchType::Json),
            other => Err(ActionError::input(
                "patch_type",
                format!("expected merge, strategic or json, got {other:?}"),
            )),
        }
    }

    fn word(self) -> &'static str {
        match self {
            PatchType::Merge => "merge",
            PatchType::Strategic => "strategic",
            PatchType::Json => "json",
        }
    }

    /// Merge patches are objects; a JSON patch is a list of operations.
    fn check(self, patch: &Value) -> Result<(), ActionError> {
        match (self, patch) {
            (PatchType::Merge | PatchType::Strategic, Value::Object(_)) => Ok(()),
            (PatchType::Merge | PatchType::Strategic, _) => Err(ActionError::input("patch", format!("a {} patch is a map", self.word()))),
            (PatchType::Json, Value::Array(ops)) => ops.iter().enumerate().try_for_each(|(i, op)| {
                let known = ["add", "remove", "replace", "move", "copy", "test"];
                match (op.get("op").and_then(Value::as_str), op.get("path").and_then(Value::as_str)) {
                    (Some(o), Some(_)) if known.contains(&o) => Ok(()),
                    _ => Err(ActionError::input(
                        "patch",
                        format!("operation {i}: expected {{op: add|remove|replace|move|copy|test, path: ...}}"),
                    )),
                }
            }),
            (PatchType::Json, _) => Err(ActionError::input("patch", "a json patch is a list of operations")),
        }
    }
}

/// The resource from `api_version` and `kind`, both checked: they become
/// segments of the request path.
fn api_resource(api_version: &str, kind: &str) -> Result<ApiResource, ActionError> {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => {
            check_name("api_version", group)?;
            (group, version)
        }
        None => ("", api_version),
    };
    if !is_version(version) {
        return Err(ActionError::input(
            "api_version",
            format!("{api_version:?} is not a group/version such as v1 or apps/v1"),
        ));
    }
    let kind_ok =
        kind.len() <= 63 && kind.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if !kind_ok {
        return Err(ActionError::input(
            "kind",
            format!("{kind:?} is not a kind such as ConfigMap or Deployment"),
        ));
    }
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok(ApiResource::from_gvk_with_plural(&gvk, &plural(kind)))
}

/// `v1`, `v2beta1`, `v1alpha3`.
fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let rest = &rest[digits..];
    if rest.is_empty() {
        return true;
    }
    let Some(n) = rest.strip_prefix("alpha").or_else(|| rest.strip_prefix("beta")) else {
        return false;
    };
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_from_api_version_and_kind() {
        let ar = api_resource("networking.k8s.io/v1", "Ingress").unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("networking.k8s.io", "v1", "ingresses")
        );
        let ar = api_resource("v1", "ConfigMap").unwrap();
        assert_eq!(
            (ar.group.as_str(), ar.api_version.as_str(), ar.plural.as_str()),
            ("", "v1", "configmaps")
        );
        assert!(api_resource("autoscaling/v2beta2", "HorizontalPodAutoscaler").is_ok());
    }

    #[test]
    fn hostile_api_versions_and_kinds_are_refused() {
        for (api_version, kind) in [
            ("../v1", "ConfigMap"),
            ("apps/v1/../..", "Deployment"),
            ("v1", "Config/Map"),
            ("v1", "configmap"),
            ("v1?x=y", "ConfigMap"),
            ("", "ConfigMap"),
            ("apps/", "Deployment"),
            ("v01", "ConfigMap"),
            ("v1gamma1", "ConfigMap"),
        ] {
            assert!(api_resource(api_version, kind).is_err(), "{api_version} {kind}");
        }
    }

    #[test]
    fn json_patches_are_lists_of_operations() {
        assert!(
            PatchType::Json
                .check(&json!([{"op": "replace", "path": "/data/x", "value": "1"}]))
                .is_ok()
        );
        assert!(PatchType::Json.check(&json!({"data": {}})).is_err());
        assert!(PatchType::Json.check(&json!([{"op": "frob", "path": "/x"}])).is_err());
        assert!(PatchType::Merge.check(&json!([])).is_err());
    }
}
