//! Just enough of server-side apply's merge semantics for sidekey's own patches: lists of
//! containers, volumes, env and mounts are keyed by `name`, Service ports by port+protocol.
//! Used to preview applies offline and to tell whether a live object already holds our
//! fields (so a resync writes nothing).

use serde_json::Value;

fn item_key(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    let protocol = || o.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    // Service ports carry a name too, but the API keys them by port and protocol.
    if let Some(p) = o.get("port").and_then(Value::as_i64) {
        return Some(format!("port={p}/{}", protocol()));
    }
    if let Some(p) = o.get("containerPort").and_then(Value::as_i64) {
        return Some(format!("containerPort={p}/{}", protocol()));
    }
    o.get("name").and_then(Value::as_str).map(|n| format!("name={n}"))
}

fn keyed(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|i| item_key(i).is_some())
}

/// Applies `patch` onto `live` in place.
pub fn merge(live: &mut Value, patch: &Value) {
    match (live, patch) {
        (Value::Object(l), Value::Object(p)) => {
            for (k, pv) in p {
                match l.get_mut(k) {
                    Some(lv) => merge(lv, pv),
                    None => {
                        l.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(p)) if keyed(p) => {
            for pv in p {
                let key = item_key(pv);
                match l.iter_mut().find(|lv| item_key(lv) == key) {
                    Some(lv) => merge(lv, pv),
                    None => l.push(pv.clone()),
                }
            }
        }
        (l, p) => *l = p.clone(),
    }
}

/// Whether every field of `desired` is present in `live` with the same value.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| l.get(k).is_some_and(|lv| contains(lv, dv))),
        (Value::Array(l), Value::Array(d)) if keyed(d) => d.iter().all(|dv| {
            let key = item_key(dv);
            l.iter().find(|lv| item_key(lv) == key).is_some_and(|lv| contains(lv, dv))
        }),
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        (l, d) => l == d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_keyed_lists_and_keeps_other_items() {
        let mut live = json!({"spec": {"initContainers": [{"name": "setup", "image": "busybox"}], "containers": [{"name": "app"}]}});
        merge(
            &mut live,
            &json!({"spec": {"initContainers": [{"name": "sidekey-proxy", "restartPolicy": "Always"}]}}),
        );
        assert_eq!(
            live,
            json!({"spec": {"initContainers": [{"name": "setup", "image": "busybox"}, {"name": "sidekey-proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}]}})
        );
        let mut svc = json!({"ports": [{"port": 80, "targetPort": 8080, "name": "http"}, {"port": 443, "protocol": "TCP"}]});
        merge(
            &mut svc,
            &json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": "sidekey-http"}]}),
        );
        assert_eq!(svc["ports"][0]["targetPort"], "sidekey-http");
        assert_eq!(svc["ports"][0]["name"], "http");
        assert_eq!(svc["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn containment_ignores_server_defaults_but_not_changed_values() {
        let live = json!({"a": {"args": ["--x", "--y"], "list": [{"name": "s", "image": "i", "terminationMessagePath": "/dev/termination-log"}], "n": 1.0}});
        assert!(contains(&live, &json!({"a": {"list": [{"name": "s", "image": "i"}], "n": 1}})));
        assert!(!contains(&live, &json!({"a": {"list": [{"name": "s", "image": "j"}]}})));
        assert!(!contains(&live, &json!({"a": {"args": ["--x"]}})), "scalar lists compare whole");
        assert!(!contains(&live, &json!({"a": {"list": [{"name": "t"}]}})));
        assert!(!contains(&live, &json!({"b": 1})));
    }
}
