//! Fuzzing of the user-space parsers (issue 15): the manifest loader and what the CLI parses from
//! the user (the conntrack filters, `--service` patterns, whole command lines, durations and
//! interface names). Every input must give `Ok` or a clear error: never a panic, never an abort.
//!
//! The manifest inputs are structure-aware: kubectl-style Services, EndpointSlices and Nodes
//! (single objects, `List`s, typed lists, several documents), then mutated in their tree (wrong
//! types, huge numbers, unicode, deep nesting, tags, removed or added keys) and in their text
//! (truncations, duplicated lines and with them duplicate keys, anchors, aliases, directives,
//! stray bytes); plus arbitrary bytes and alias bombs. Valid manifests must load to the same
//! result after harmless reformatting (JSON, shuffled keys, CRLF, comments, a `List`).
//!
//! Cases per property: `PROPTEST_CASES` (a long run), else each property's CI default below,
//! chosen so that the whole file runs in seconds. `docs/testing.md` records the long runs.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use lb_common::maps::{Backend, CtValue, FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;
use xlb::cli::args::{Cli, Command, ConntrackCommand, FlowFilterArgs, FlowSort, parse_seconds};
use xlb::cli::conntrack::FlowFilter;
use xlb::cli::inspect::match_services;
use xlb::compile::compile;
use xlb::compile::plan::NodeIdentity;
use xlb::datapath::reconcile::{ServiceSnapshot, Snapshot};
use xlb::source::manifest::{self, LoadedManifests, ManifestError};
use xlb::source::validate;
use yaml_serde::{Mapping, Value};

/// `PROPTEST_CASES` if set, else `ci`.
fn config(ci: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(ci);
    Config {
        cases,
        ..Config::default()
    }
}

const FILE: &str = "fuzz/manifest.yaml";

// ---------------------------------------------------------------------------------------------
// Manifest generators: valid-looking objects as JSON trees.
// ---------------------------------------------------------------------------------------------

/// Strings that mean something to YAML, to Kubernetes or to a byte-minded parser.
const NASTY_STRINGS: &[&str] = &[
    "",
    " ",
    "null",
    "~",
    "yes",
    "no",
    "on",
    "0x1F",
    "0o17",
    "1e3",
    "-0",
    ".inf",
    ".nan",
    "65536",
    "2147483648",
    "-2147483649",
    "99999999999999999999999",
    "TCP",
    "udp",
    "NodePort",
    "LoadBalancer",
    "IPv4",
    "IPv6",
    "FQDN",
    "v1",
    "List",
    "ServiceList",
    "Service",
    "EndpointSlice",
    "Node",
    "discovery.k8s.io/v1",
    "198.18.0.1",
    "198.18.0.0/15",
    "999.1.2.3",
    "::",
    "fd00::1",
    "1.2.3.4%eth0",
    "a/b",
    "a:b",
    "-",
    "--",
    "web-",
    "🦀",
    "\u{202e}evil",
    "a\u{0}b",
    "\u{feff}",
    "é",
    "İ",
    "ß",
    "ǅ",
    "\u{85}",
    "\u{2028}",
    "line\nbreak",
    "tab\there",
    "'quoted'",
    "\"dq\"",
    "&anchor",
    "*alias",
    "!tag",
    "# not a comment",
    "key: value",
    "- item",
    "[1, 2]",
    "{a: b}",
    "|",
    ">",
    "%YAML",
    "---",
    "...",
];

const NAMES: &[&str] = &["web", "db", "api", "a-1", "cache"];
const NAMESPACES: &[&str] = &["default", "prod", "kube-system"];
const NODES: &[&str] = &["node-a", "node-b", "node-c"];
const PORT_NAMES: &[&str] = &["http", "https", "dns", "metrics"];

/// A name from `pool` mostly, sometimes an invalid or odd one.
fn name_from(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(pool).prop_map(String::from),
        1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        1 => "[a-zA-Z0-9.\\-_]{0,70}",
        1 => "\\PC{0,12}",
    ]
}

fn port_number() -> impl Strategy<Value = i64> {
    prop_oneof![
        10 => 1i64..=65535,
        1 => Just(0i64),
        1 => Just(70_000i64),
        1 => Just(-1i64),
        1 => Just(i64::from(i32::MAX) + 1),
        1 => any::<i64>(),
    ]
}

fn node_port() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 30_000i64..=32_767, 1 => port_number()]
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => (0u8..4, any::<u8>()).prop_map(|(c, d)| format!("198.18.{c}.{d}")),
        2 => (any::<u16>()).prop_map(|x| format!("fd00::{x:x}")),
        1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        1 => "[0-9.:a-f]{0,20}",
    ]
}

fn protocol() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("TCP".to_string()),
        3 => Just("UDP".to_string()),
        1 => Just("SCTP".to_string()),
        1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
    ]
}

/// An object from optional fields (absent ones left out).
fn obj(fields: Vec<(&str, Option<serde_json::Value>)>) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
    )
}

fn metadata(
    name: String,
    namespace: Option<String>,
    labels: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
) -> serde_json::Value {
    obj(vec![
        ("name", Some(json!(name))),
        ("namespace", namespace.map(|n| json!(n))),
        ("labels", labels),
        ("annotations", annotations),
    ])
}

fn service_port() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(name_from(PORT_NAMES)),
        port_number(),
        prop::option::of(protocol()),
        prop::option::of(prop_oneof![
            port_number().prop_map(|p| json!(p)),
            name_from(PORT_NAMES).prop_map(|n| json!(n)),
        ]),
        prop::option::of(node_port()),
    )
        .prop_map(|(name, port, protocol, target, node_port)| {
            obj(vec![
                ("name", name.map(|n| json!(n))),
                ("port", Some(json!(port))),
                ("protocol", protocol.map(|p| json!(p))),
                ("targetPort", target),
                ("nodePort", node_port.map(|p| json!(p))),
            ])
        })
}

fn service() -> impl Strategy<Value = serde_json::Value> {
    let meta = (
        name_from(NAMES),
        prop::option::of(name_from(NAMESPACES)),
        prop::option::of(prop_oneof![
            Just(json!({"service.kubernetes.io/service-proxy-name": "other"})),
            Just(json!({"service.kubernetes.io/headless": ""})),
            Just(json!({"app": "web"})),
        ]),
    );
    let spec = (
        prop::option::of(prop_oneof![
            4 => Just("NodePort".to_string()),
            4 => Just("LoadBalancer".to_string()),
            1 => Just("ClusterIP".to_string()),
            1 => Just("ExternalName".to_string()),
            1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        ]),
        prop::collection::vec(service_port(), 0..4),
        prop::option::of(prop_oneof![
            Just("Local".to_string()),
            Just("Cluster".to_string()),
            prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        ]),
        prop::option::of((
            prop_oneof![
                Just("ClientIP".to_string()),
                Just("None".to_string()),
                prop::sample::select(NASTY_STRINGS).prop_map(String::from),
            ],
            prop::option::of(prop_oneof![1i64..=86_400, any::<i64>()]),
        )),
        prop::option::of(prop::collection::vec(ip(), 0..3)),
        prop::option::of(ip()),
        prop::option::of(prop::collection::vec(
            prop_oneof![(ip(), 0u8..40).prop_map(|(a, l)| format!("{a}/{l}")), ip(),],
            0..3,
        )),
        prop::option::of(node_port()),
        prop::option::of(prop_oneof![Just("None".to_string()), ip()]),
        prop::option::of(prop::collection::vec(
            prop_oneof![
                Just("IPv4".to_string()),
                Just("IPv6".to_string()),
                prop::sample::select(NASTY_STRINGS).prop_map(String::from),
            ],
            0..3,
        )),
    );
    let status = prop::option::of(prop::collection::vec(
        (
            prop::option::of(ip()),
            prop::option::of(prop_oneof![
                Just("lb.example.com".to_string()),
                prop::sample::select(NASTY_STRINGS).prop_map(String::from),
            ]),
            prop::option::of(prop_oneof![
                Just("VIP".to_string()),
                Just("Proxy".to_string()),
                prop::sample::select(NASTY_STRINGS).prop_map(String::from),
            ]),
        ),
        0..3,
    ));
    (meta, spec, status).prop_map(
        |(
            (name, namespace, labels),
            (
                type_,
                ports,
                policy,
                affinity,
                external_ips,
                lb_ip,
                ranges,
                health,
                cluster_ip,
                families,
            ),
            status,
        )| {
            let (affinity, affinity_config) = match affinity {
                Some((a, t)) => (
                    Some(json!(a)),
                    t.map(|t| json!({"clientIP": {"timeoutSeconds": t}})),
                ),
                None => (None, None),
            };
            obj(vec![
                ("apiVersion", Some(json!("v1"))),
                ("kind", Some(json!("Service"))),
                ("metadata", Some(metadata(name, namespace, labels, None))),
                (
                    "spec",
                    Some(obj(vec![
                        ("type", type_.map(|t| json!(t))),
                        ("ports", Some(json!(ports))),
                        ("externalTrafficPolicy", policy.map(|p| json!(p))),
                        ("sessionAffinity", affinity),
                        ("sessionAffinityConfig", affinity_config),
                        ("externalIPs", external_ips.map(|e| json!(e))),
                        ("loadBalancerIP", lb_ip.map(|i| json!(i))),
                        ("loadBalancerSourceRanges", ranges.map(|r| json!(r))),
                        ("healthCheckNodePort", health.map(|h| json!(h))),
                        ("clusterIP", cluster_ip.map(|c| json!(c))),
                        ("ipFamilies", families.map(|f| json!(f))),
                    ])),
                ),
                (
                    "status",
                    status.map(|ingress| {
                        let ingress: Vec<serde_json::Value> = ingress
                            .into_iter()
                            .map(|(ip, hostname, mode)| {
                                obj(vec![
                                    ("ip", ip.map(|i| json!(i))),
                                    ("hostname", hostname.map(|h| json!(h))),
                                    ("ipMode", mode.map(|m| json!(m))),
                                ])
                            })
                            .collect();
                        json!({"loadBalancer": {"ingress": ingress}})
                    }),
                ),
            ])
        },
    )
}

fn endpoint_slice() -> impl Strategy<Value = serde_json::Value> {
    let meta = (
        name_from(NAMES).prop_map(|n| format!("{n}-abc")),
        prop::option::of(name_from(NAMESPACES)),
        prop::option::of(name_from(NAMES)),
        prop::option::of(prop_oneof![
            Just("2024-01-01T00:00:00Z".to_string()),
            Just("9999-12-31T23:59:59.999999999Z".to_string()),
            Just("-009999-01-01T00:00:00Z".to_string()),
            Just("1970-01-01T00:00:00+14:00".to_string()),
            Just("2024-02-30T25:61:61Z".to_string()),
            prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        ]),
    );
    let endpoint = (
        prop::collection::vec(ip(), 0..3),
        prop::option::of((
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        )),
        prop::option::of(name_from(NODES)),
        prop::option::of(name_from(NAMES)),
    )
        .prop_map(|(addresses, conditions, node, hostname)| {
            obj(vec![
                ("addresses", Some(json!(addresses))),
                (
                    "conditions",
                    conditions.map(|(r, s, t)| {
                        obj(vec![
                            ("ready", r.map(|b| json!(b))),
                            ("serving", s.map(|b| json!(b))),
                            ("terminating", t.map(|b| json!(b))),
                        ])
                    }),
                ),
                ("nodeName", node.map(|n| json!(n))),
                ("hostname", hostname.map(|h| json!(h))),
            ])
        });
    let port = (
        prop::option::of(name_from(PORT_NAMES)),
        prop::option::of(port_number()),
        prop::option::of(protocol()),
    )
        .prop_map(|(name, port, protocol)| {
            obj(vec![
                ("name", name.map(|n| json!(n))),
                ("port", port.map(|p| json!(p))),
                ("protocol", protocol.map(|p| json!(p))),
            ])
        });
    (
        meta,
        prop_oneof![
            8 => Just("IPv4".to_string()),
            1 => Just("IPv6".to_string()),
            1 => Just("FQDN".to_string()),
            1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        ],
        prop::collection::vec(endpoint, 0..4),
        prop::collection::vec(port, 0..3),
    )
        .prop_map(
            |((name, namespace, service, trigger), address_type, endpoints, ports)| {
                let labels = service.map(|s| json!({"kubernetes.io/service-name": s}));
                let annotations =
                    trigger.map(|t| json!({"endpoints.kubernetes.io/last-change-trigger-time": t}));
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": metadata(name, namespace, labels, annotations),
                    "addressType": address_type,
                    "endpoints": endpoints,
                    "ports": ports,
                })
            },
        )
}

fn node() -> impl Strategy<Value = serde_json::Value> {
    (
        name_from(NODES),
        prop::collection::vec(
            (
                prop_oneof![
                    4 => Just("InternalIP".to_string()),
                    2 => Just("ExternalIP".to_string()),
                    1 => Just("Hostname".to_string()),
                    1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
                ],
                ip(),
            ),
            0..4,
        ),
    )
        .prop_map(|(name, addresses)| {
            let addresses: Vec<serde_json::Value> = addresses
                .into_iter()
                .map(|(t, a)| json!({"type": t, "address": a}))
                .collect();
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name},
                "status": {"addresses": addresses},
            })
        })
}

/// Documents the loader skips or refuses as a whole.
fn other_object() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})),
        Just(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "x"}})),
        Just(json!({"apiVersion": "v2", "kind": "Service", "metadata": {"name": "web"}})),
        Just(json!({"kind": "Service", "metadata": {"name": "web"}})),
        Just(json!({"apiVersion": "v1", "metadata": {"name": "web"}})),
        Just(json!({"apiVersion": 1, "kind": ["Service"]})),
        Just(json!({"apiVersion": "v1", "kind": "List", "items": 7})),
        Just(json!(["not", "an", "object"])),
        Just(json!("just a string")),
        Just(json!(42)),
    ]
}

fn object() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        4 => service(),
        4 => endpoint_slice(),
        2 => node(),
        1 => other_object(),
    ]
}

/// One document: an object, a `List`, a typed list whose items leave out apiVersion and kind,
/// or nothing.
fn document() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        8 => object(),
        2 => prop::collection::vec(object(), 0..4)
            .prop_map(|items| json!({"apiVersion": "v1", "kind": "List", "items": items})),
        1 => prop::collection::vec(service(), 0..3).prop_map(|items| typed_list("ServiceList", "v1", items)),
        1 => prop::collection::vec(endpoint_slice(), 0..3)
            .prop_map(|items| typed_list("EndpointSliceList", "discovery.k8s.io/v1", items)),
        1 => prop::collection::vec(node(), 0..3).prop_map(|items| typed_list("NodeList", "v1", items)),
        1 => Just(serde_json::Value::Null),
    ]
}

fn typed_list(kind: &str, api: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            // kubectl leaves them out of the items of a typed list; keep them on every other.
            if i % 2 == 0
                && let Some(m) = item.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    json!({"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn documents() -> impl Strategy<Value = Vec<serde_json::Value>> {
    prop::collection::vec(document(), 1..5)
}

// ---------------------------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------------------------

fn nasty_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        prop_oneof![
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::NAN),
            Just(1e300),
            Just(-0.0)
        ]
        .prop_map(|f| Value::Number(f.into())),
        prop::sample::select(NASTY_STRINGS).prop_map(|s| Value::String(s.into())),
        "\\PC{0,40}".prop_map(Value::String),
        (1usize..20_000).prop_map(|n| Value::String("x".repeat(n))),
        Just(Value::Sequence(Vec::new())),
        Just(Value::Mapping(Mapping::new())),
        (ip(), port_number()).prop_map(|(a, p)| {
            let mut m = Mapping::new();
            m.insert("ip".into(), a.into());
            m.insert("port".into(), Value::Number(p.into()));
            Value::Mapping(m)
        }),
    ]
}

#[derive(Debug, Clone)]
enum TreeMutation {
    /// Replace the node at the path.
    Replace(Vec<usize>, Value),
    /// Remove the child the path's last step names.
    Remove(Vec<usize>),
    /// Put the node into a one-element sequence (`true`) or mapping.
    Wrap(Vec<usize>, bool),
    /// Put the node `depth` levels deep into alternating sequences and mappings.
    Nest(Vec<usize>, usize),
    /// Tag the node (`!tag node`).
    Tag(Vec<usize>, String),
    /// Add a key (a known field name or an odd one) to the mapping at the path.
    AddKey(Vec<usize>, Value, Value),
}

fn path() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..7)
}

fn tree_mutation() -> impl Strategy<Value = TreeMutation> {
    let key = prop_oneof![
        prop::sample::select(
            &[
                "apiVersion",
                "kind",
                "metadata",
                "name",
                "namespace",
                "spec",
                "ports",
                "port",
                "items",
                "addresses",
                "endpoints",
                "status",
                "<<",
            ][..]
        )
        .prop_map(|k| Value::String(k.into())),
        nasty_value(),
    ];
    prop_oneof![
        6 => (path(), nasty_value()).prop_map(|(p, v)| TreeMutation::Replace(p, v)),
        3 => path().prop_map(TreeMutation::Remove),
        2 => (path(), any::<bool>()).prop_map(|(p, s)| TreeMutation::Wrap(p, s)),
        1 => (path(), 0usize..300).prop_map(|(p, d)| TreeMutation::Nest(p, d)),
        1 => (path(), prop_oneof![
            Just("!foo".to_string()),
            Just("!!str".to_string()),
            Just("!!int".to_string()),
            Just("!!binary".to_string()),
            Just("tag:yaml.org,2002:map".to_string()),
        ]).prop_map(|(p, t)| TreeMutation::Tag(p, t)),
        2 => (path(), key, nasty_value()).prop_map(|(p, k, v)| TreeMutation::AddKey(p, k, v)),
    ]
}

/// Whether `walk` can go one step further down from `v`.
fn has_children(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => !m.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Tagged(_) => true,
        _ => false,
    }
}

/// The node `path` leads to (indices taken modulo the number of children), stopping early at
/// a leaf.
fn walk<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    let Some((&i, rest)) = path.split_first() else {
        return v;
    };
    if !has_children(v) {
        return v;
    }
    match v {
        Value::Mapping(m) => {
            let n = m.len();
            walk(m.values_mut().nth(i % n).expect("a child"), rest)
        }
        Value::Sequence(s) => {
            let n = s.len();
            walk(&mut s[i % n], rest)
        }
        Value::Tagged(t) => walk(&mut t.value, rest),
        _ => unreachable!("has_children"),
    }
}

fn apply_tree(v: &mut Value, m: &TreeMutation) {
    match m {
        TreeMutation::Replace(p, new) => *walk(v, p) = new.clone(),
        TreeMutation::Remove(p) => {
            let (last, parent) = match p.split_last() {
                Some((last, parent)) => (*last, parent),
                None => (0, &[][..]),
            };
            match walk(v, parent) {
                Value::Mapping(m) if !m.is_empty() => {
                    let key = m.keys().nth(last % m.len()).cloned().expect("a key");
                    m.shift_remove(&key);
                }
                Value::Sequence(s) if !s.is_empty() => {
                    let n = s.len();
                    s.remove(last % n);
                }
                other => *other = Value::Null,
            }
        }
        TreeMutation::Wrap(p, seq) => {
            let node = walk(v, p);
            let inner = std::mem::take(node);
            *node = if *seq {
                Value::Sequence(vec![inner])
            } else {
                let mut m = Mapping::new();
                m.insert("k".into(), inner);
                Value::Mapping(m)
            };
        }
        TreeMutation::Nest(p, depth) => {
            let node = walk(v, p);
            let mut inner = std::mem::take(node);
            for level in 0..*depth {
                inner = if level % 2 == 0 {
                    Value::Sequence(vec![inner])
                } else {
                    let mut m = Mapping::new();
                    m.insert("items".into(), inner);
                    Value::Mapping(m)
                };
            }
            *node = inner;
        }
        TreeMutation::Tag(p, tag) => {
            let node = walk(v, p);
            if let Value::Tagged(t) = node {
                // A node has one tag (the emitter refuses a tag on a tag).
                t.tag = yaml_serde::value::Tag::new(tag.as_str());
                return;
            }
            let inner = std::mem::take(node);
            *node = Value::Tagged(Box::new(yaml_serde::value::TaggedValue {
                tag: yaml_serde::value::Tag::new(tag.as_str()),
                value: inner,
            }));
        }
        TreeMutation::AddKey(p, k, new) => {
            if let Value::Mapping(m) = walk(v, p) {
                m.insert(k.clone(), new.clone());
            }
        }
    }
}

/// Drops a tag that sits directly on a tagged node (the emitter refuses a tag on a tag; a
/// mutation can tag the value inside a tagged node).
fn one_tag_each(v: &mut Value) {
    match v {
        Value::Tagged(t) => {
            while let Value::Tagged(inner) = &mut t.value {
                t.value = std::mem::take(&mut inner.value);
            }
            one_tag_each(&mut t.value);
        }
        Value::Mapping(m) => m.values_mut().for_each(one_tag_each),
        Value::Sequence(s) => s.iter_mut().for_each(one_tag_each),
        _ => {}
    }
}

/// Text pieces that change how YAML reads what follows.
const INSERTS: &[&str] = &[
    ": ",
    "- ",
    "\t",
    "  ",
    "&a ",
    "*a",
    "*a ",
    "<<: *a\n",
    "---\n",
    "...\n",
    "!!binary ",
    "!!str ",
    "!!int ",
    "!!map ",
    "!foo ",
    "%YAML 1.2\n---\n",
    "%TAG ! tag:x,2000:\n---\n",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "? ",
    "|\n",
    ">-\n",
    "\u{feff}",
    "\0",
    "\r",
    "\n",
    "\u{85}",
    "\u{2028}",
    "99999999999999999999999",
    "1e400",
    ".nan",
    "-.inf",
    "0x7fffffff",
    "@",
    "`",
    "🦀",
    "\\",
    "\"\\u00",
    "\"\\x",
];

#[derive(Debug, Clone)]
enum TextMutation {
    Truncate(usize),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
    Insert(usize, String),
    Delete(usize, usize),
    Indent(usize, usize),
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    let piece = prop_oneof![
        4 => prop::sample::select(INSERTS).prop_map(String::from),
        1 => "\\PC{1,8}",
        1 => "[\\x00-\\x7f]{1,4}",
    ];
    prop_oneof![
        2 => any::<usize>().prop_map(TextMutation::Truncate),
        3 => any::<usize>().prop_map(TextMutation::DuplicateLine),
        1 => any::<usize>().prop_map(TextMutation::DeleteLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TextMutation::SwapLines(a, b)),
        5 => (any::<usize>(), piece).prop_map(|(at, s)| TextMutation::Insert(at, s)),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, n)| TextMutation::Delete(at, n)),
        1 => (any::<usize>(), 1usize..5).prop_map(|(l, n)| TextMutation::Indent(l, n)),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(text: &str, at: usize) -> usize {
    let mut i = at % (text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply_text(text: &mut String, m: &TextMutation) {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    match m {
        TextMutation::Truncate(at) => {
            let i = boundary(text, *at);
            text.truncate(i);
            return;
        }
        TextMutation::Insert(at, s) => {
            let i = boundary(text, *at);
            text.insert_str(i, s);
            return;
        }
        TextMutation::Delete(at, n) => {
            let i = boundary(text, *at);
            let j = boundary(text, i + n);
            if j >= i {
                text.replace_range(i..j, "");
            }
            return;
        }
        _ if lines.is_empty() => return,
        TextMutation::DuplicateLine(l) => {
            let l = l % lines.len();
            let line = lines[l].clone();
            let line = if line.ends_with('\n') {
                line
            } else {
                line + "\n"
            };
            lines.insert(l, line);
        }
        TextMutation::DeleteLine(l) => {
            let n = lines.len();
            lines.remove(l % n);
        }
        TextMutation::SwapLines(a, b) => {
            let n = lines.len();
            lines.swap(a % n, b % n);
        }
        TextMutation::Indent(l, n) => {
            let k = lines.len();
            lines[l % k].insert_str(0, &" ".repeat(*n));
        }
    }
    *text = lines.concat();
}

// ---------------------------------------------------------------------------------------------
// Emitting documents.
// ---------------------------------------------------------------------------------------------

fn to_yaml(v: &serde_json::Value) -> Value {
    yaml_serde::to_value(v).expect("a JSON tree is a YAML tree")
}

fn emit_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| yaml_serde::to_string(d).expect("emitting a YAML tree"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// JSON per document where the tree has one (string keys, finite numbers), else YAML.
fn emit_json(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| match serde_json::to_string(d) {
            Ok(j) => j + "\n",
            Err(_) => yaml_serde::to_string(d).expect("emitting a YAML tree"),
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every mapping's keys in another order (a permutation drawn from `seed`).
fn shuffle_keys(v: &Value, seed: &mut u64) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut entries: Vec<(Value, Value)> = m
                .iter()
                .map(|(k, v)| (k.clone(), shuffle_keys(v, seed)))
                .collect();
            for i in (1..entries.len()).rev() {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let j = (*seed >> 33) as usize % (i + 1);
                entries.swap(i, j);
            }
            Value::Mapping(entries.into_iter().collect())
        }
        Value::Sequence(s) => Value::Sequence(s.iter().map(|x| shuffle_keys(x, seed)).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// What every load must satisfy.
// ---------------------------------------------------------------------------------------------

fn node_identity() -> NodeIdentity {
    NodeIdentity {
        node_name: "node-a".into(),
        table_size: lb_common::maps::MAGLEV_DEFAULT_TABLE_SIZE,
        extra_local_addrs: vec![Ipv4Addr::new(198, 18, 0, 1)],
    }
}

/// The last line an error may name: one per line break as YAML counts them (CR, LF, NEL, LS,
/// PS; a CRLF counts twice, which only loosens the bound), plus the first line, plus one when
/// the text does not end with a break (the parser ends the last line itself, and an error at
/// the end of the stream names the line after it, column 1).
fn last_line(text: &str) -> usize {
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let breaks = text.chars().filter(|c| is_break(*c)).count();
    breaks + 1 + usize::from(!text.ends_with(is_break))
}

/// Loads `text`; checks that an error is a clear one (the file, a document, a position within
/// the text, a message) and that a success holds only valid objects, which compile takes.
fn load_checked(text: &str) -> Result<Result<LoadedManifests, String>, TestCaseError> {
    match manifest::load_str(Path::new(FILE), text) {
        Ok(loaded) => {
            for (key, s) in loaded.state.services() {
                let errors = validate::service(s);
                prop_assert!(errors.is_empty(), "Service {key} loaded with {errors:?}");
            }
            for (key, s) in loaded.state.endpoint_slices() {
                let errors = validate::endpoint_slice(s);
                prop_assert!(errors.is_empty(), "slice {key} loaded with {errors:?}");
            }
            for (name, n) in loaded.state.nodes() {
                let errors = validate::node(n);
                prop_assert!(errors.is_empty(), "Node {name} loaded with {errors:?}");
            }
            for r in &loaded.rejected {
                prop_assert!(
                    !r.object.validate().is_empty(),
                    "rejected a valid object: {r}"
                );
                prop_assert!(!r.message.is_empty());
                prop_assert!(r.document >= 1);
                prop_assert!(r.to_string().starts_with(FILE), "{r}");
            }
            // What the loader accepts, compile takes (the run loop's next step).
            let _ = compile(&loaded.state, &node_identity());
            Ok(Ok(loaded))
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(shown.starts_with(FILE), "{shown}");
            match &e {
                ManifestError::Invalid {
                    document,
                    line,
                    column,
                    message,
                    ..
                } => {
                    prop_assert!(*document >= 1, "{shown}");
                    prop_assert!(!message.trim().is_empty(), "{shown}");
                    if let Some(line) = line {
                        prop_assert!(
                            *line >= 1 && *line <= last_line(text),
                            "line {line} past line {}: {shown}\n{text}",
                            last_line(text)
                        );
                    }
                    if let Some(column) = column {
                        prop_assert!(*column >= 1, "{shown}");
                    }
                }
                other => prop_assert!(false, "load_str gave {other:?}"),
            }
            Ok(Err(shown))
        }
    }
}

/// A load's result without positions (which reformatting moves): the state, the warnings, and
/// each rejected object with its document and reasons.
type Comparable = (
    xlb::source::cluster::ClusterState,
    Vec<String>,
    Vec<(String, usize, String)>,
);

fn comparable(loaded: LoadedManifests) -> Comparable {
    let rejected = loaded
        .rejected
        .iter()
        .map(|r| (format!("{:?}", r.object), r.document, r.message.clone()))
        .collect();
    (loaded.state, loaded.warnings, rejected)
}

proptest! {
    #![proptest_config(config(512))]

    /// Generated manifests, mutated in their tree and in their text: a clear error or a valid
    /// state, never a panic.
    #[test]
    fn manifest_mutations_never_panic(
        docs in documents(),
        tree in prop::collection::vec(tree_mutation(), 0..4),
        text_edits in prop::collection::vec(text_mutation(), 0..4),
        json in any::<bool>(),
    ) {
        let mut docs: Vec<Value> = docs.iter().map(to_yaml).collect();
        for (i, m) in tree.iter().enumerate() {
            let n = docs.len();
            apply_tree(&mut docs[i % n], m);
        }
        docs.iter_mut().for_each(one_tag_each);
        let mut text = if json { emit_json(&docs) } else { emit_yaml(&docs) };
        for m in &text_edits {
            apply_text(&mut text, m);
        }
        let _ = load_checked(&text)?;
    }

    /// Valid-looking manifests load to the same result as JSON, with keys in another order,
    /// with CRLF line ends and comments; and to the same objects gathered in one `List`.
    #[test]
    fn manifests_survive_harmless_reformatting(docs in documents(), seed in any::<u64>()) {
        let yaml: Vec<Value> = docs.iter().map(to_yaml).collect();
        let block = emit_yaml(&yaml);
        let reference = load_checked(&block)?;

        let mut seed = seed;
        let shuffled: Vec<Value> = yaml.iter().map(|d| shuffle_keys(d, &mut seed)).collect();
        let decorated = format!(
            "# kubectl get -o yaml\n---\n{}...\n# end\n",
            emit_yaml(&shuffled).replace("\n---\n", "\n...\n# next\n---\n")
        )
        .replace('\n', "\r\n");
        for text in [emit_json(&yaml), decorated] {
            let other = load_checked(&text)?;
            match (&reference, other) {
                (Ok(a), Ok(b)) => prop_assert_eq!(
                    comparable(a.clone()),
                    comparable(b),
                    "{}\n----- reformatted:\n{}", block, text
                ),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(
                    false,
                    "{}\ngave {:?}\n----- reformatted:\n{}\ngave {:?}", block, a.as_ref().map(|_| ()), text, b.map(|_| ())
                ),
            }
        }

        // The objects of every document, as the items of one List.
        let mut items = Vec::new();
        for d in &docs {
            match d.get("kind").and_then(|k| k.as_str()) {
                Some(k) if k.ends_with("List") => {
                    // A typed list's items may lack apiVersion/kind: only plain Lists flatten.
                    if k != "List" { return Ok(()); }
                    items.extend(d["items"].as_array().into_iter().flatten().cloned());
                }
                _ if d.is_null() => {}
                _ => items.push(d.clone()),
            }
        }
        let list = yaml_serde::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
            .expect("emitting a List");
        if let (Ok(a), Ok(b)) = (&reference, load_checked(&list)?) {
            prop_assert_eq!(&a.state, &b.state, "{}\n----- as one List:\n{}", block, list);
        }
    }

    /// Arbitrary bytes (read as the file reader would after a lossy decode), and text over
    /// YAML's own alphabet.
    #[test]
    fn arbitrary_text_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        yamlish in "[a-zA-Z0-9 :\\-\\[\\]{}&*!|>'\"#%@`,?.\n\t]{0,300}",
    ) {
        let _ = load_checked(&String::from_utf8_lossy(&bytes))?;
        let _ = load_checked(&yamlish)?;
    }
}

/// Alias chains, every one of 1 to 9 levels of 1 to 11 references (too few to sample): small
/// ones load, ones that expand far past the allowance are refused as alias bombs (by pass 0's
/// budget, or first by the parser's own bound on replays, 100 per event).
#[test]
fn alias_bombs_are_refused() {
    for levels in 1usize..10 {
        for width in 1usize..12 {
            let mut text = String::from(
                "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n  x:\n",
            );
            text.push_str(&format!("    a0: &a0 [{}]\n", vec!["x"; width].join(", ")));
            for l in 1..levels {
                let refs = vec![format!("*a{}", l - 1); width].join(", ");
                text.push_str(&format!("    a{l}: &a{l} [{refs}]\n"));
            }
            // Nodes the last level expands to: a sequence of `width` copies of the level below.
            let mut nodes = 1 + width as u128;
            for _ in 1..levels {
                nodes = 1 + width as u128 * nodes;
            }
            let result = load_checked(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let budget = (text.len() + manifest::ALIAS_EXPANSION_ALLOWANCE) as u128;
            if nodes > 2 * budget || result.is_err() {
                assert!(
                    matches!(&result, Err(e) if e.contains("alias bomb")),
                    "{levels}x{width}: {nodes} nodes: {:?}",
                    result.as_ref().map(|_| ())
                );
            }
            if levels <= 3 {
                assert!(
                    result.is_ok(),
                    "{levels}x{width}: {:?}",
                    result.as_ref().map(|_| ())
                );
            }
        }
    }
}

/// Nesting far deeper than the parser's recursion limit: an error, not a stack overflow. Before
/// the bracket bound, the parser spent minutes on some of these before its recursion limit
/// refused them (157 s per parse for the 400 KB of `{a: `, 58 s for the 100 KB `spec: [[[`).
#[test]
fn deep_nesting_is_an_error() {
    let depth = 100_000;
    let cases = [
        "[".repeat(depth),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        "{a: ".repeat(depth),
        format!("{}x{}", "{a: ".repeat(depth), "}".repeat(depth)),
        (0..2_000)
            .map(|i| format!("{}- \n", " ".repeat(i)))
            .collect(),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {}",
            "[".repeat(depth)
        ),
        // Nesting at the bracket bound, again and again (the recursion limit ends it early).
        format!(
            "x: {}",
            format!("{}{}", "{a: ".repeat(1024), "}".repeat(1024)).repeat(80)
        ),
        // Lists inside Lists, 500 deep.
        {
            let mut doc = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}});
            for _ in 0..500 {
                doc = json!({"apiVersion": "v1", "kind": "List", "items": [doc]});
            }
            serde_json::to_string(&doc).unwrap()
        },
    ];
    for text in &cases {
        let r = manifest::load_str(Path::new(FILE), text);
        let e = r.expect_err("nesting beyond the recursion limit");
        assert!(e.to_string().starts_with(FILE), "{e}");
    }
}

/// Bytes that are not UTF-8 in a file: the reader's clear error.
#[test]
fn non_utf8_file_is_an_io_error() {
    let dir = std::env::temp_dir().join(format!("xlb-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, b"apiVersion: v1\nkind: \xff\xfe\n").unwrap();
    let r = manifest::load(&file);
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Err(ManifestError::Io { path, .. }) => assert_eq!(path, file),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI's filters and arguments.
// ---------------------------------------------------------------------------------------------

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn flow_key(client: (Ipv4Addr, u16), frontend: (Ipv4Addr, u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: be(client.0),
        dst_addr: be(frontend.0),
        src_port: client.1.to_be(),
        dst_port: frontend.1.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn backend(addr: Ipv4Addr, port: u16) -> Backend {
    Backend {
        addr: be(addr),
        port: port.to_be(),
        flags: 1,
        proto: IPPROTO_TCP,
        node_addr: 0,
    }
}

/// Addresses from a small set, so that generated flows and filters meet.
fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        3 => (0u8..2, 0u8..3).prop_map(|(c, d)| Ipv4Addr::new(198, 18, c, d)),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 79u16..82, 1 => any::<u16>()]
}

/// `ADDR`, `ADDR:PORT` or `:PORT` (when `port_only`).
fn addr_port(port_only: bool) -> impl Strategy<Value = (Option<Ipv4Addr>, Option<u16>)> {
    (prop::option::of(addr()), prop::option::of(port())).prop_map(move |(a, p)| match (a, p) {
        (None, _) if !port_only => (Some(Ipv4Addr::new(198, 18, 0, 1)), p),
        (None, None) => (None, Some(80)),
        other => other,
    })
}

fn show(ap: (Option<Ipv4Addr>, Option<u16>)) -> String {
    match ap {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!(":{p}"),
        (None, None) => unreachable!("addr_port gives one"),
    }
}

fn ap_matches(ap: (Option<Ipv4Addr>, Option<u16>), a: Ipv4Addr, p: u16) -> bool {
    ap.0.is_none_or(|x| x == a) && ap.1.is_none_or(|x| x == p)
}

#[derive(Debug, Clone)]
enum ClientFilter {
    AddrPort((Option<Ipv4Addr>, Option<u16>)),
    Cidr(Ipv4Addr, u8),
}

/// A string the filters, patterns or command lines might be given.
fn filter_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9.:/]{0,24}",
        2 => "[0-9a-fA-F.:/\\[\\]% -]{0,24}",
        1 => prop::sample::select(NASTY_STRINGS).prop_map(String::from),
        1 => "\\PC{0,24}",
        1 => (addr(), any::<u64>()).prop_map(|(a, n)| format!("{a}:{n}")),
        1 => (addr(), any::<i64>()).prop_map(|(a, n)| format!("{a}/{n}")),
    ]
}

fn service_name() -> impl Strategy<Value = String> {
    (
        prop::sample::select(NAMESPACES),
        prop::sample::select(NAMES),
        prop::option::of(prop::sample::select(PORT_NAMES)),
        prop::sample::select(&["TCP", "UDP"][..]),
    )
        .prop_map(|(ns, name, port, proto)| match port {
            Some(p) => format!("{ns}/{name}:{p}/{proto}"),
            None => format!("{ns}/{name}/{proto}"),
        })
}

fn snapshot(names: Vec<String>) -> Snapshot {
    Snapshot {
        services: names
            .into_iter()
            .map(|name| {
                Arc::new(ServiceSnapshot {
                    name,
                    protocol: "TCP".into(),
                    service_id: 0,
                    table_size: 7,
                    frontends: Vec::new(),
                    backends: Vec::new(),
                })
            })
            .collect(),
    }
}

/// `match_services`' contract, written independently: exact names win; else `pattern` followed
/// by `:` or `/`, after the namespace too when `pattern` names no namespace.
fn pattern_names(name: &str, pattern: &str) -> bool {
    let follows = |rest: &str| rest.starts_with(':') || rest.starts_with('/');
    name.strip_prefix(pattern).is_some_and(follows)
        || (!pattern.contains('/')
            && name
                .split_once('/')
                .and_then(|(_, rest)| rest.strip_prefix(pattern))
                .is_some_and(follows))
}

/// Tokens of `xlb` command lines: subcommands, flags, values, junk.
const TOKENS: &[&str] = &[
    "services",
    "conntrack",
    "list",
    "watch",
    "flush",
    "stats",
    "maglev",
    "show",
    "top",
    "completions",
    "man",
    "down",
    "pin-dir",
    "run",
    "bash",
    "--frontend",
    "--backend",
    "--client",
    "--service",
    "-p",
    "--protocol",
    "tcp",
    "udp",
    "--sort",
    "age",
    "idle",
    "client",
    "--limit",
    "-o",
    "--output",
    "json",
    "yaml",
    "human",
    "--interval",
    "-i",
    "--duration",
    "--pin-dir",
    "--yes",
    "-y",
    "--slots",
    "--backends",
    "--iface",
    "--all",
    "--node-name",
    "--manifests",
    "--maglev-table-size",
    "--tunnel-port",
    "--census-rate",
    "--census-interval",
    "--poll-ms",
    "--metrics-addr",
    "--health-addr",
    "--log-format",
    "--log-level",
    "--xdp-mode",
    "--pod-delivery",
    "--",
    "-",
    "-h",
    "--help",
    "-V",
    "--version",
    "--frontend=",
    "--limit=-1",
    "0",
    "0.05",
    "3600",
    "1e309",
    "NaN",
    "-inf",
    "18446744073709551616",
    "198.18.0.1:80",
    ":80",
    "198.18.0.0/24",
    "[::1]:80",
];

fn cli_token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(TOKENS).prop_map(String::from),
        1 => filter_text(),
        1 => "-{1,2}[a-z\\-]{0,12}(=.{0,8})?",
    ]
}

fn seconds_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<f64>().prop_map(|f| f.to_string()),
        2 => (0.0f64..4000.0).prop_map(|f| f.to_string()),
        1 => "[0-9.eE+\\-]{0,12}",
        1 => prop::sample::select(&["inf", "-inf", "NaN", "nan", "infinity", "1e-400", "+0.05", ".5", "5."][..])
            .prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Any strings in `--frontend`, `--backend`, `--client` and `--service`: `Ok`, or an error
    /// that names the flag; never a panic.
    #[test]
    fn flow_filters_never_panic(
        frontend in prop::option::of(filter_text()),
        backend in prop::option::of(filter_text()),
        client in prop::option::of(filter_text()),
        service in prop::option::of(prop_oneof![filter_text(), service_name()]),
        names in prop::collection::vec(service_name(), 0..4),
    ) {
        let args = FlowFilterArgs {
            frontend: frontend.clone(),
            backend: backend.clone(),
            client: client.clone(),
            protocol: None,
            service: service.clone(),
        };
        match FlowFilter::parse(&args, &snapshot(names)) {
            Ok(f) => {
                let given = [&frontend, &backend, &client, &service].iter().filter(|x| x.is_some()).count();
                prop_assert_eq!(f.is_empty(), given == 0);
                for s in [&frontend, &backend, &client, &service].into_iter().flatten() {
                    prop_assert!(f.describe().contains(s.as_str()), "{}", f.describe());
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(
                    ["--frontend", "--backend", "--client", "no Service port matches"]
                        .iter()
                        .any(|flag| e.contains(flag)),
                    "unclear error: {}", e
                );
            }
        }
    }

    /// Valid filters parse to what they say: a flow matches exactly when every given part
    /// matches it.
    #[test]
    fn valid_flow_filters_mean_what_they_say(
        frontend in prop::option::of(addr_port(true)),
        backend_filter in prop::option::of(addr_port(false)),
        client in prop::option::of(prop_oneof![
            addr_port(false).prop_map(ClientFilter::AddrPort),
            (addr(), 0u8..=32).prop_map(|(a, l)| ClientFilter::Cidr(a, l)),
        ]),
        udp in prop::option::of(any::<bool>()),
        flow in ((addr(), port()), (addr(), port()), (addr(), port()), any::<bool>()),
        copy in any::<u8>(),
    ) {
        let ((mut c, mut c_port), (mut f, mut f_port), (mut b, mut b_port), flow_udp) = flow;
        // Make the flow meet the filters often, so that matches are tested, not only misses.
        if copy & 1 != 0 && let Some((a, p)) = frontend {
            f = a.unwrap_or(f);
            f_port = p.unwrap_or(f_port);
        }
        if copy & 2 != 0 && let Some((a, p)) = backend_filter {
            b = a.unwrap_or(b);
            b_port = p.unwrap_or(b_port);
        }
        if copy & 4 != 0 && let Some(ClientFilter::AddrPort((a, p))) = &client {
            c = a.unwrap_or(c);
            c_port = p.unwrap_or(c_port);
        }
        if copy & 8 != 0 && let Some(ClientFilter::Cidr(a, _)) = &client {
            c = *a;
        }
        let args = FlowFilterArgs {
            frontend: frontend.map(show),
            backend: backend_filter.map(show),
            client: client.as_ref().map(|c| match c {
                ClientFilter::AddrPort(ap) => show(*ap),
                ClientFilter::Cidr(a, l) => format!("{a}/{l}"),
            }),
            protocol: udp.map(|u| if u {
                xlb::cli::args::ProtocolArg::Udp
            } else {
                xlb::cli::args::ProtocolArg::Tcp
            }),
            service: None,
        };
        let filter = FlowFilter::parse(&args, &Snapshot::default())
            .map_err(|e| TestCaseError::fail(format!("{args:?}: {e}")))?;
        let proto = if flow_udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let key = flow_key((c, c_port), (f, f_port), proto);
        let value = CtValue::default();
        let expected = frontend.is_none_or(|ap| ap_matches(ap, f, f_port))
            && backend_filter.is_none_or(|ap| ap_matches(ap, b, b_port))
            && client.as_ref().is_none_or(|cf| match cf {
                ClientFilter::AddrPort(ap) => ap_matches(*ap, c, c_port),
                ClientFilter::Cidr(net, len) => {
                    let shift = 32 - u32::from(*len);
                    u64::from(u32::from(c)) >> shift == u64::from(u32::from(*net)) >> shift
                }
            })
            && udp.is_none_or(|u| u == flow_udp);
        prop_assert_eq!(
            filter.matches(&key, &value, Some(&backend(b, b_port))),
            expected,
            "{:?} on {}:{} -> {}:{} -> {}:{} udp={}", args, c, c_port, f, f_port, b, b_port, flow_udp
        );
        // A released backend (no record) never matches a backend filter.
        if backend_filter.is_some() {
            prop_assert!(!filter.matches(&key, &value, None));
        }
    }

    /// `--service` and `maglev show` patterns: the Service ports named, as the docs say.
    #[test]
    fn service_patterns_mean_what_they_say(
        names in prop::collection::vec(service_name(), 0..6),
        pick in any::<usize>(),
        form in 0u8..4,
        junk in filter_text(),
    ) {
        // A name itself, its `ns/name`, its bare `name`, or anything.
        let parts = |n: &str| -> Vec<String> {
            n.split(':').next().unwrap_or(n).split('/').map(String::from).collect()
        };
        let pattern = match (names.get(pick % names.len().max(1)), form) {
            (Some(n), 0) => n.clone(),
            (Some(n), 1) => parts(n)[..2].join("/"),
            (Some(n), 2) => parts(n)[1].clone(),
            _ => junk,
        };
        let snap = snapshot(names.clone());
        let exact: Vec<&String> = names.iter().filter(|n| **n == pattern).collect();
        let expected: Vec<&String> = if exact.is_empty() {
            names.iter().filter(|n| pattern_names(n, &pattern)).collect()
        } else {
            exact
        };
        match match_services(&snap, &pattern) {
            Ok(found) => {
                let found: Vec<&String> = found.iter().map(|s| &s.name).collect();
                prop_assert_eq!(found, expected, "pattern {:?}", pattern);
            }
            Err(e) => {
                prop_assert!(expected.is_empty(), "pattern {:?}: {}", pattern, e);
                prop_assert!(e.to_string().contains("no Service port matches"));
            }
        }
    }

    /// Whole command lines, valid or not: clap's answer (a value or an error), never a panic.
    #[test]
    fn command_lines_never_panic(tokens in prop::collection::vec(cli_token(), 0..10)) {
        let _ = Cli::try_parse_from(std::iter::once("xlb".to_string()).chain(tokens));
    }

    /// A valid `conntrack list` line parses to its values.
    #[test]
    fn conntrack_list_lines_parse_to_their_values(
        frontend in addr_port(true),
        limit in any::<usize>(),
        sort in prop::sample::select(&[
            ("frontend", FlowSort::Frontend),
            ("client", FlowSort::Client),
            ("backend", FlowSort::Backend),
            ("age", FlowSort::Age),
            ("idle", FlowSort::Idle),
        ][..]),
    ) {
        let front = show(frontend);
        let line = [
            "xlb", "conntrack", "list", "--frontend", &front, "--limit", &limit.to_string(),
            "--sort", sort.0,
        ];
        let cli = Cli::try_parse_from(line).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match cli.command {
            Command::Conntrack { command: ConntrackCommand::List(a) } => {
                prop_assert_eq!(a.filter.frontend.as_deref(), Some(front.as_str()));
                prop_assert_eq!(a.limit, Some(limit));
                prop_assert_eq!(a.sort, Some(sort.1));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// `--interval`/`--duration` values: a duration within 0.05..=3600 s equal to the number
    /// given, or an error.
    #[test]
    fn seconds_parse_to_their_value(text in seconds_text()) {
        match (parse_seconds(&text), text.parse::<f64>()) {
            (Ok(d), Ok(v)) => {
                prop_assert!((0.05..=3600.0).contains(&v), "{} -> {:?}", text, d);
                prop_assert!((d.as_secs_f64() - v).abs() <= 1e-9 * v.max(1.0), "{} -> {:?}", text, d);
            }
            (Ok(d), Err(_)) => prop_assert!(false, "{:?} is no number, yet gave {:?}", text, d),
            (Err(_), Ok(v)) => prop_assert!(!(0.05..=3600.0).contains(&v), "{} refused", text),
            (Err(_), Err(_)) => {}
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `--iface` names reach the interface look-ups as given: any string (NUL, long, unicode)
    /// is an error or an interface, never a panic.
    #[test]
    fn interface_names_never_panic(name in prop_oneof![
        Just("lo".to_string()),
        "[a-z0-9]{0,20}",
        "\\PC{0,20}",
        "[\\x00-\\x7f]{0,20}",
    ]) {
        let index = xlb::sys::ifaddrs::ifindex(&name);
        let _ = xlb::sys::ifaddrs::ipv4_addrs(&name);
        let _ = xlb::sys::ethtool::driver(&name);
        if name == "lo" {
            prop_assert!(index.is_ok());
        }
    }
}

#[test]
fn durations_are_whole_numbers_of_nanoseconds() {
    // The boundaries parse_seconds promises.
    assert_eq!(parse_seconds("0.05").unwrap(), Duration::from_millis(50));
    assert_eq!(parse_seconds("3600").unwrap(), Duration::from_secs(3600));
    assert!(parse_seconds("NaN").is_err());
    assert!(parse_seconds("inf").is_err());
}

/// Found by `manifests_survive_harmless_reformatting`: a JSON string holding U+0085, U+2028 or
/// U+2029 loaded with a space instead (YAML 1.1 folds them as line breaks).
#[test]
fn json_strings_keep_unicode_line_separators() {
    for c in ['\u{85}', '\u{2028}', '\u{2029}'] {
        let value = format!("x{c}y");
        // The one free-text field the loader keeps (it trims the rest, annotations included).
        const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";
        let doc = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-a", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {TRIGGER: value}},
            "addressType": "IPv4", "endpoints": []});
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains(c));
        let yaml = yaml_serde::to_string(&doc).unwrap();
        for text in [json, yaml] {
            let loaded = manifest::load_str(Path::new(FILE), &text).unwrap();
            let slice = loaded
                .state
                .endpoint_slice("default", "web-a")
                .expect("the EndpointSlice");
            let kept = &slice.metadata.annotations.as_ref().expect("annotations")[TRIGGER];
            assert_eq!(kept, &value, "{text}");
        }
    }
}

/// Found by `alias_bombs_are_refused`: the parser's own bound on alias replays fired before
/// pass 0's budget, with a bare "repetition limit exceeded".
#[test]
fn parser_alias_limit_says_alias_bomb() {
    let mut text = String::from("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nx:\n");
    text.push_str(&format!("  a0: &a0 [{}]\n", ["x"; 9].join(", ")));
    for l in 1..6 {
        let refs = vec![format!("*a{}", l - 1); 9].join(", ");
        text.push_str(&format!("  a{l}: &a{l} [{refs}]\n"));
    }
    let e = manifest::load_str(Path::new(FILE), &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("alias bomb"), "{e}");
}

/// Brackets nested past the bound are refused before parsing, where they are; the bound
/// leaves room far above the deepest document the parser accepts.
#[test]
fn bracket_depth_is_bounded_before_parsing() {
    let deep = manifest::MAX_BRACKET_DEPTH + 1;
    let text = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n}}\n---\nx: {}",
        "[".repeat(deep)
    );
    match manifest::load_str(Path::new(FILE), &text) {
        Err(ManifestError::Invalid {
            document,
            line,
            column,
            message,
            ..
        }) => {
            assert_eq!((document, line, column), (2, Some(5), Some(3 + deep)));
            assert!(message.contains("nest more than"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // 128 levels (the parser's limit) load; brackets closed again do not add up.
    let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
    let ok = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n, annotations: {{a: '{}'}}}}\nx: {}\n",
        nested(1000),
        nested(120)
    );
    manifest::load_str(Path::new(FILE), &ok).unwrap();
}
