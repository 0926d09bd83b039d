//! `api/openapi.yaml` against the implementation: every route the API server
//! serves is documented and every documented route is served, the documented
//! responses are Firecracker's, and each definition describes exactly the
//! JSON the corresponding Rust type of `husk_api::vmm` or `husk_api::devices`
//! reads and writes (field names, required fields, enum spellings, limits),
//! and husk's extensions are marked as such.

use std::collections::BTreeSet;

use husk_api::devices::{
    validate_host_dev_name, validate_id, FsCachePolicy, FsConfig, NetworkInterfaceConfig, RateLimiterConfig,
    TokenBucket, VsockConfig, FS_TAG_MAX, IFNAMSIZ, MAX_ID_LEN, MIN_GUEST_CID, UNIX_PATH_MAX,
};
use husk_api::vmm::{
    ActionType, ApiError, BootSourceConfig, CpuTemplate, FullVmConfig, HugePages, InstanceActionInfo, InstanceInfo,
    InstanceState, LogLevel, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig, Vm, VmState,
    MAX_MEM_SIZE_MIB, MAX_VCPU_COUNT,
};
use husk_vmm::api_server::ROUTES;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

fn spec() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn mapping(value: &Yaml) -> &serde_yaml::Mapping {
    value.as_mapping().unwrap_or_else(|| panic!("expected a mapping, found {value:?}"))
}

fn key_str(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        // Response codes are integer keys.
        Yaml::Number(n) => n.to_string(),
        other => panic!("unexpected key {other:?}"),
    }
}

/// Every documented (METHOD, path) with its operation.
fn operations(spec: &Yaml) -> Vec<(String, String, &Yaml)> {
    let mut operations = Vec::new();
    for (path, item) in mapping(&spec["paths"]) {
        for (method, operation) in mapping(item) {
            let method = key_str(method);
            assert!(HTTP_METHODS.contains(&method.as_str()), "{path:?}: {method} is not an operation");
            operations.push((method.to_uppercase(), key_str(path), operation));
        }
    }
    operations
}

fn definition<'a>(spec: &'a Yaml, name: &str) -> &'a Yaml {
    let definition = &spec["definitions"][name];
    assert!(definition.is_mapping(), "definition {name} is missing");
    definition
}

fn reference_target(schema: &Yaml) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

/// The names of a templated path's parameters: `["iface_id"]` for
/// `/network-interfaces/{iface_id}`.
fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')).collect()
}

/// The operation's `in: body` parameter.
fn body_parameter<'a>(what: &str, operation: &'a Yaml) -> &'a Yaml {
    let parameters = operation["parameters"].as_sequence().unwrap_or_else(|| panic!("{what}: no parameters"));
    let bodies: Vec<&Yaml> = parameters.iter().filter(|p| p["in"].as_str() == Some("body")).collect();
    assert_eq!(bodies.len(), 1, "{what}: one body parameter");
    bodies[0]
}

#[test]
fn documented_routes_are_exactly_the_served_routes() {
    let spec = spec();
    assert_eq!(spec["swagger"].as_str(), Some("2.0"));
    assert_eq!(spec["basePath"].as_str(), Some("/"));

    let documented: BTreeSet<(String, String)> =
        operations(&spec).into_iter().map(|(method, path, _)| (method, path)).collect();
    let served: BTreeSet<(String, String)> =
        ROUTES.iter().map(|&(method, path)| (method.to_string(), path.to_string())).collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");

    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in api/openapi.yaml: {undocumented:?}");
    assert!(unserved.is_empty(), "in api/openapi.yaml but not served: {unserved:?}");
}

#[test]
fn every_reference_resolves_and_every_definition_is_used() {
    fn collect<'a>(value: &'a Yaml, refs: &mut Vec<&'a str>) {
        match value {
            Yaml::Mapping(map) => {
                for (key, value) in map {
                    if key.as_str() == Some("$ref") {
                        refs.push(value.as_str().expect("$ref is a string"));
                    } else {
                        collect(value, refs);
                    }
                }
            }
            Yaml::Sequence(items) => items.iter().for_each(|item| collect(item, refs)),
            _ => {}
        }
    }
    let spec = spec();
    let mut refs = Vec::new();
    collect(&spec, &mut refs);
    let defined: BTreeSet<String> = mapping(&spec["definitions"]).keys().map(key_str).collect();
    let mut used = BTreeSet::new();
    for reference in refs {
        let name = reference.strip_prefix("#/definitions/").unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(defined.contains(name), "{reference} does not resolve");
        used.insert(name.to_string());
    }
    let unused: Vec<_> = defined.difference(&used).collect();
    assert!(unused.is_empty(), "definitions nothing refers to: {unused:?}");
}

#[test]
fn operations_document_firecrackers_responses() {
    let spec = spec();
    for (method, path, operation) in operations(&spec) {
        let what = format!("{method} {path}");
        assert!(operation["operationId"].is_string(), "{what}: no operationId");
        let responses = mapping(&operation["responses"]);
        let codes: BTreeSet<String> = responses.keys().map(key_str).collect();
        let response =
            |code: &str| &operation["responses"][&responses.keys().find(|k| key_str(k) == code).unwrap().clone()];
        assert!(codes.contains("default"), "{what}: no default response");
        assert_eq!(reference_target(&response("default")["schema"]), Some("Error"), "{what}: default is not an Error");
        if method == "GET" {
            assert_eq!(codes, BTreeSet::from(["200".to_string(), "default".to_string()]), "{what}");
            assert!(reference_target(&response("200")["schema"]).is_some(), "{what}: 200 has no schema");
            assert!(operation.get("parameters").is_none(), "{what}: a GET takes no body");
        } else {
            assert_eq!(codes, BTreeSet::from(["204".into(), "400".into(), "default".into()]), "{what}");
            assert!(response("204").get("schema").is_none(), "{what}: 204 has no body");
            assert_eq!(reference_target(&response("400")["schema"]), Some("Error"), "{what}");
            let body = body_parameter(&what, operation);
            assert_eq!(body["required"].as_bool(), Some(true), "{what}: the body is required");
            assert!(reference_target(&body["schema"]).is_some(), "{what}");
        }
        // Every {parameter} of the path is documented as a required string
        // path parameter, and nothing else is but the body.
        let parameters = operation.get("parameters").and_then(Yaml::as_sequence).map(Vec::as_slice).unwrap_or_default();
        let in_path: Vec<&str> = parameters
            .iter()
            .filter(|p| p["in"].as_str() != Some("body"))
            .map(|p| {
                assert_eq!(p["in"].as_str(), Some("path"), "{what}: {p:?}");
                assert_eq!(p["required"].as_bool(), Some(true), "{what}: {p:?}");
                assert_eq!(p["type"].as_str(), Some("string"), "{what}: {p:?}");
                p["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(in_path, path_parameters(&path), "{what}: path parameters");
    }
}

/// The body schema (or 200 schema for GET) a route documents.
fn route_schema(spec: &Yaml, method: &str, path: &str) -> String {
    let operation = &spec["paths"][path][method.to_lowercase().as_str()];
    let schema = if method == "GET" {
        let responses = mapping(&operation["responses"]);
        let ok = responses.iter().find(|(code, _)| key_str(code) == "200").unwrap().1;
        &ok["schema"]
    } else {
        &body_parameter(&format!("{method} {path}"), operation)["schema"]
    };
    reference_target(schema).unwrap().to_string()
}

#[test]
fn routes_use_firecrackers_definitions() {
    let spec = spec();
    for (method, path, name) in [
        ("GET", "/", "InstanceInfo"),
        ("PUT", "/actions", "InstanceActionInfo"),
        ("PUT", "/boot-source", "BootSource"),
        ("PUT", "/logger", "Logger"),
        ("GET", "/machine-config", "MachineConfiguration"),
        ("PUT", "/machine-config", "MachineConfiguration"),
        ("PATCH", "/machine-config", "PartialMachineConfiguration"),
        ("PUT", "/metrics", "Metrics"),
        ("PUT", "/network-interfaces/{iface_id}", "NetworkInterface"),
        ("PATCH", "/vm", "Vm"),
        ("GET", "/vm/config", "FullVmConfiguration"),
        ("PUT", "/vsock", "Vsock"),
        // husk's extension.
        ("PUT", "/fs/{fs_id}", "FileSystem"),
    ] {
        assert_eq!(route_schema(&spec, method, path), name, "{method} {path}");
    }
}

/// Checks that definition `name` describes `T`'s JSON: `sample` sets every
/// field; its keys must be the definition's properties, it must round-trip
/// through `T` unchanged, and removing a field must fail to parse exactly
/// when the definition says the field is required.
fn check_definition<T: Serialize + DeserializeOwned>(spec: &Yaml, name: &str, sample: Json) {
    let definition = definition(spec, name);
    let properties: BTreeSet<String> = mapping(&definition["properties"]).keys().map(key_str).collect();
    let required: BTreeSet<String> =
        definition.get("required").map(|r| r.as_sequence().unwrap().iter().map(key_str).collect()).unwrap_or_default();
    assert!(required.is_subset(&properties), "{name}: required fields that are not properties");

    let sample_keys: BTreeSet<String> = sample.as_object().unwrap().keys().cloned().collect();
    assert_eq!(sample_keys, properties, "{name}: documented properties differ from the type's fields");
    let parsed: T = serde_json::from_value(sample.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(serde_json::to_value(&parsed).unwrap(), sample, "{name}: does not round-trip");

    for property in &properties {
        let mut without = sample.clone();
        without.as_object_mut().unwrap().remove(property);
        let parses = serde_json::from_value::<T>(without).is_ok();
        assert_eq!(parses, !required.contains(property), "{name}.{property}: required is documented wrongly");

        // null reads as absent exactly where the spec says the property is
        // nullable (an Option; Firecracker's config files write nulls).
        let mut null = sample.clone();
        null[property.as_str()] = Json::Null;
        let nullable = definition["properties"][property.as_str()].get("x-nullable").and_then(Yaml::as_bool);
        let parses = serde_json::from_value::<T>(null).is_ok();
        assert_eq!(parses, nullable == Some(true), "{name}.{property}: x-nullable is documented wrongly");
        if let Some(values) = definition["properties"][property.as_str()]["enum"].as_sequence() {
            assert_eq!(values.contains(&Yaml::Null), parses, "{name}.{property}: null in the enum");
        }
    }
    // An unknown field is refused exactly where the spec says so.
    let mut extra = sample.clone();
    extra.as_object_mut().unwrap().insert("no_such_field".into(), json!(1));
    let closed = definition.get("additionalProperties").and_then(Yaml::as_bool) == Some(false);
    assert_eq!(
        serde_json::from_value::<T>(extra).is_err(),
        closed,
        "{name}: additionalProperties is documented wrongly"
    );
}

#[test]
fn definitions_describe_the_rust_types() {
    let spec = spec();
    check_definition::<BootSourceConfig>(
        &spec,
        "BootSource",
        json!({"kernel_image_path": "/vmlinux", "initrd_path": "/initrd", "boot_args": "console=ttyS0"}),
    );
    let machine = json!({
        "vcpu_count": 2, "mem_size_mib": 256, "smt": true, "cpu_template": "None",
        "track_dirty_pages": true, "huge_pages": "2M"
    });
    check_definition::<MachineConfig>(&spec, "MachineConfiguration", machine.clone());
    check_definition::<MachineConfigUpdate>(&spec, "PartialMachineConfiguration", machine);
    check_definition::<InstanceActionInfo>(&spec, "InstanceActionInfo", json!({"action_type": "InstanceStart"}));
    check_definition::<Vm>(&spec, "Vm", json!({"state": "Paused"}));
    check_definition::<LoggerConfig>(
        &spec,
        "Logger",
        json!({"log_path": "/log", "level": "Debug", "show_level": true, "show_log_origin": false, "module": "husk"}),
    );
    check_definition::<MetricsConfig>(&spec, "Metrics", json!({"metrics_path": "/metrics"}));
    check_definition::<InstanceInfo>(
        &spec,
        "InstanceInfo",
        json!({"app_name": "husk", "id": "vm", "state": "Not started", "vmm_version": "0.1.0"}),
    );
    check_definition::<ApiError>(&spec, "Error", json!({"fault_message": "no"}));
    check_definition::<VsockConfig>(&spec, "Vsock", json!({"vsock_id": "v", "guest_cid": 3, "uds_path": "/v.sock"}));
    let bucket = json!({"size": 1000, "one_time_burst": 10, "refill_time": 100});
    check_definition::<TokenBucket>(&spec, "TokenBucket", bucket.clone());
    let limiter = json!({"bandwidth": bucket, "ops": {"size": 10, "refill_time": 1000}});
    check_definition::<RateLimiterConfig>(&spec, "RateLimiter", limiter.clone());
    let net = json!({
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
        "rx_rate_limiter": limiter.clone(), "tx_rate_limiter": limiter
    });
    check_definition::<NetworkInterfaceConfig>(&spec, "NetworkInterface", net.clone());
    let fs = json!({"fs_id": "root", "tag": "rootfs", "shared_dir": "/srv", "read_only": true, "cache": "never",
        "dax_window_mib": 256, "allow_host_root": true, "root_uid": 1000, "root_gid": 1000});
    check_definition::<FsConfig>(&spec, "FileSystem", fs.clone());
    // Each reference to a device definition is where the Rust type has it.
    let properties = &definition(&spec, "NetworkInterface")["properties"];
    for limiter in ["rx_rate_limiter", "tx_rate_limiter"] {
        assert_eq!(reference_target(&properties[limiter]), Some("RateLimiter"), "NetworkInterface.{limiter}");
    }
    for bucket in ["bandwidth", "ops"] {
        let target = reference_target(&definition(&spec, "RateLimiter")["properties"][bucket]);
        assert_eq!(target, Some("TokenBucket"), "RateLimiter.{bucket}");
    }

    // GET /vm/config writes every key, so a serialized value is the sample.
    let full = FullVmConfig {
        boot_source: Some(BootSourceConfig { kernel_image_path: "/k".into(), initrd_path: None, boot_args: None }),
        machine_config: Some(MachineConfig::default()),
        logger: Some(LoggerConfig {
            log_path: "/l".into(),
            level: None,
            show_level: None,
            show_log_origin: None,
            module: None,
        }),
        metrics: Some(MetricsConfig { metrics_path: "/m".into() }),
        vsock: Some(serde_json::from_value(json!({"guest_cid": 3, "uds_path": "/v.sock"})).unwrap()),
        network_interfaces: vec![serde_json::from_value(net).unwrap()],
        fs: vec![serde_json::from_value(fs).unwrap()],
        ..FullVmConfig::default()
    };
    check_definition::<FullVmConfig>(&spec, "FullVmConfiguration", serde_json::to_value(&full).unwrap());
    let properties = &definition(&spec, "FullVmConfiguration")["properties"];
    assert_eq!(reference_target(&properties["vsock"]), Some("Vsock"));
    assert_eq!(reference_target(&properties["network-interfaces"]["items"]), Some("NetworkInterface"));
    assert_eq!(reference_target(&properties["fs"]["items"]), Some("FileSystem"));
}

/// Checks that `values` documented for an enum are exactly `variants`'
/// serializations, and that each parses back.
fn check_enum<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &str,
    schema: &Yaml,
    variants: &[T],
) {
    // A null in the enum is a nullable property's (checked by check_definition).
    let documented: BTreeSet<String> = schema["enum"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: no enum"))
        .iter()
        .filter(|value| !value.is_null())
        .map(key_str)
        .collect();
    let serialized: BTreeSet<String> =
        variants.iter().map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().to_string()).collect();
    assert_eq!(documented, serialized, "{what}");
    for value in &documented {
        serde_json::from_value::<T>(Json::String(value.clone())).unwrap_or_else(|e| panic!("{what}: {value}: {e}"));
    }
}

#[test]
fn enums_are_spelt_as_the_rust_types_spell_them() {
    let spec = spec();
    use CpuTemplate::*;
    check_enum("CpuTemplate", definition(&spec, "CpuTemplate"), &[C3, T2, T2S, T2CL, T2A, V1N1, CpuTemplate::None]);
    for name in ["MachineConfiguration", "PartialMachineConfiguration"] {
        check_enum(
            &format!("{name}.huge_pages"),
            &definition(&spec, name)["properties"]["huge_pages"],
            &[HugePages::None, HugePages::Hugetlbfs2M],
        );
        assert_eq!(reference_target(&definition(&spec, name)["properties"]["cpu_template"]), Some("CpuTemplate"));
    }
    check_enum(
        "InstanceActionInfo.action_type",
        &definition(&spec, "InstanceActionInfo")["properties"]["action_type"],
        &[ActionType::InstanceStart, ActionType::SendCtrlAltDel, ActionType::FlushMetrics],
    );
    check_enum("Vm.state", &definition(&spec, "Vm")["properties"]["state"], &[VmState::Paused, VmState::Resumed]);
    check_enum(
        "InstanceInfo.state",
        &definition(&spec, "InstanceInfo")["properties"]["state"],
        &[InstanceState::NotStarted, InstanceState::Running, InstanceState::Paused],
    );
    check_enum(
        "Logger.level",
        &definition(&spec, "Logger")["properties"]["level"],
        &[LogLevel::Error, LogLevel::Warning, LogLevel::Info, LogLevel::Debug, LogLevel::Trace, LogLevel::Off],
    );
    check_enum(
        "FileSystem.cache",
        &definition(&spec, "FileSystem")["properties"]["cache"],
        &[FsCachePolicy::Never, FsCachePolicy::Auto, FsCachePolicy::Always],
    );
    let default = &definition(&spec, "FileSystem")["properties"]["cache"]["default"];
    assert_eq!(default.as_str(), serde_json::to_value(FsCachePolicy::default()).unwrap().as_str());
}

/// The ids the API takes (`validate_id`), as the spec writes them.
const ID_PATTERN: &str = "^[A-Za-z0-9_]+$";

/// The characters of a regex character class body written with literal
/// characters, `\xHH`, `\uHHHH`, `\t`, `\n`, `\r` escapes and ranges, sorted.
fn expand_class(class: &str) -> Vec<char> {
    fn hex(chars: &mut std::str::Chars<'_>, digits: usize) -> char {
        let code: String = chars.take(digits).collect();
        char::from_u32(u32::from_str_radix(&code, 16).unwrap()).unwrap()
    }
    let (mut atoms, mut range_ends) = (Vec::new(), Vec::new());
    let mut chars = class.chars();
    while let Some(c) = chars.next() {
        let atom = match c {
            '-' if !atoms.is_empty() => {
                range_ends.push(atoms.len());
                continue;
            }
            '\\' => match chars.next().unwrap() {
                'x' => hex(&mut chars, 2),
                'u' => hex(&mut chars, 4),
                't' => '\t',
                'n' => '\n',
                'r' => '\r',
                other => panic!("unexpected escape \\{other}"),
            },
            c => c,
        };
        atoms.push(atom);
    }
    let mut expanded = Vec::new();
    for (i, &atom) in atoms.iter().enumerate() {
        if range_ends.contains(&i) {
            expanded.extend((atoms[i - 1] as u32 + 1..=atom as u32).filter_map(char::from_u32));
        } else {
            expanded.push(atom);
        }
    }
    expanded.sort_unstable();
    expanded
}

#[test]
fn documented_limits_are_the_validated_limits() {
    let spec = spec();
    for name in ["MachineConfiguration", "PartialMachineConfiguration"] {
        let properties = &definition(&spec, name)["properties"];
        assert_eq!(properties["vcpu_count"]["minimum"].as_u64(), Some(1), "{name}");
        assert_eq!(properties["vcpu_count"]["maximum"].as_u64(), Some(u64::from(MAX_VCPU_COUNT)), "{name}");
        assert_eq!(properties["mem_size_mib"]["minimum"].as_u64(), Some(1), "{name}");
        assert_eq!(properties["mem_size_mib"]["maximum"].as_u64(), Some(MAX_MEM_SIZE_MIB as u64), "{name}");
    }
    let at = |vcpu_count, mem_size_mib| MachineConfig { vcpu_count, mem_size_mib, ..MachineConfig::default() };
    assert!(at(MAX_VCPU_COUNT, MAX_MEM_SIZE_MIB).validate().is_ok());
    assert!(at(MAX_VCPU_COUNT + 1, 1).validate().is_err());
    assert!(at(1, MAX_MEM_SIZE_MIB + 1).validate().is_err());

    let length = |schema: &Yaml| (schema["minLength"].as_u64(), schema["maxLength"].as_u64());
    let id_length = (Some(1), Some(MAX_ID_LEN as u64));
    for (path, name) in [("/network-interfaces/{iface_id}", "iface_id"), ("/fs/{fs_id}", "fs_id")] {
        let parameters = spec["paths"][path]["put"]["parameters"].as_sequence().unwrap();
        let parameter = parameters.iter().find(|p| p["name"].as_str() == Some(name)).unwrap();
        assert_eq!(length(parameter), id_length, "{path}: {name}");
        assert_eq!(parameter["pattern"].as_str(), Some(ID_PATTERN), "{path}: {name}");
    }
    assert_eq!(length(&definition(&spec, "NetworkInterface")["properties"]["iface_id"]), id_length);
    assert_eq!(length(&definition(&spec, "FileSystem")["properties"]["fs_id"]), id_length);
    for (name, id) in [("NetworkInterface", "iface_id"), ("FileSystem", "fs_id")] {
        assert_eq!(definition(&spec, name)["properties"][id]["pattern"].as_str(), Some(ID_PATTERN), "{name}.{id}");
    }
    // The pattern's class is the characters validate_id takes: every
    // character of the first planes but those is refused.
    for c in (0u32..0x3000).filter_map(char::from_u32) {
        let in_class = c.is_ascii_alphanumeric() || c == '_';
        assert_eq!(validate_id(&c.to_string()).is_ok(), in_class, "{c:?}");
    }
    // host_dev_name's pattern names the characters validate_host_dev_name refuses.
    let pattern = definition(&spec, "NetworkInterface")["properties"]["host_dev_name"]["pattern"].as_str().unwrap();
    let refused: Vec<char> = (0u32..0x3001)
        .filter_map(char::from_u32)
        .filter(|c| validate_host_dev_name(&format!("a{c}")).is_err())
        .collect();
    let listed = pattern.strip_prefix("^[^").and_then(|p| p.strip_suffix("]+$")).expect("a negated class");
    assert_eq!(refused, expand_class(listed), "host_dev_name's pattern");
    assert_eq!(
        length(&definition(&spec, "NetworkInterface")["properties"]["host_dev_name"]),
        (Some(1), Some(IFNAMSIZ as u64 - 1))
    );
    assert_eq!(length(&definition(&spec, "FileSystem")["properties"]["tag"]), (Some(1), Some(FS_TAG_MAX as u64)));
    let vsock = &definition(&spec, "Vsock")["properties"];
    assert_eq!(length(&vsock["uds_path"]), (Some(1), Some(UNIX_PATH_MAX as u64 - 1)));
    assert_eq!(vsock["guest_cid"]["minimum"].as_u64(), Some(MIN_GUEST_CID));
    assert_eq!(vsock["guest_cid"]["maximum"].as_u64(), Some(u64::from(u32::MAX)));
    let with_cid = |guest_cid| VsockConfig { vsock_id: None, guest_cid, uds_path: "/v".into() }.validate();
    assert!(with_cid(MIN_GUEST_CID).is_ok() && with_cid(u64::from(u32::MAX)).is_ok());
    assert!(with_cid(MIN_GUEST_CID - 1).is_err() && with_cid(u64::from(u32::MAX) + 1).is_err());
}

/// Everything Firecracker lacks is marked `x-husk-extension: true`, and
/// nothing else is: the marks are how a reader comparing this file with
/// Firecracker's tells the two apart.
#[test]
fn husk_extensions_are_marked() {
    let spec = spec();
    let marked = |value: &Yaml| value.get("x-husk-extension").and_then(Yaml::as_bool) == Some(true);
    let operations: Vec<String> = operations(&spec)
        .into_iter()
        .filter(|(_, _, operation)| marked(operation))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert_eq!(operations, ["PUT /fs/{fs_id}"]);
    let definitions: Vec<String> =
        mapping(&spec["definitions"]).iter().filter(|(_, d)| marked(d)).map(|(name, _)| key_str(name)).collect();
    assert_eq!(definitions, ["FileSystem"]);
    let full: Vec<String> = mapping(&definition(&spec, "FullVmConfiguration")["properties"])
        .iter()
        .filter(|(_, p)| marked(p))
        .map(|(name, _)| key_str(name))
        .collect();
    assert_eq!(full, ["fs"]);
}
