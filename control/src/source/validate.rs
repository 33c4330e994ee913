//! The API server's validation of the objects xlb reads, for sources that have no API server in
//! front of them (manifest files).
//!
//! The rules are Kubernetes' own (`pkg/apis/core/validation` for Services and Nodes,
//! `pkg/apis/discovery/validation` for EndpointSlices), restricted to the fields xlb reads plus the
//! object names, and reported the way the API server words them (`field: Invalid value: ...`).
//! An object with any error is refused whole: the API server never stores half an object, and
//! neither does xlb. Everything here is a pure function of one object; what to do with a refused
//! object (keep the last good version) is the source's business.
//!
//! Not checked: anything that needs the other objects or the cluster's configuration (NodePort
//! uniqueness across Services, the cluster IP range), and fields xlb does not read.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The API server's default `--service-node-port-range`, which kind, kubeadm and the managed
/// offerings keep: `nodePort` and `healthCheckNodePort` must lie in it.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// EndpointSlice limits of the discovery API.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
pub const MAX_SLICE_PORTS: usize = 20000;

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

/// One reason an object is invalid: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// All errors of one object, `; `-separated (empty when there are none).
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(FieldError::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects the errors of one object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            detail: detail.into(),
        });
    }

    fn invalid(&mut self, field: impl Into<String>, value: impl fmt::Debug, why: &str) {
        self.push(field, format!("Invalid value: {value:?}: {why}"));
    }

    fn invalid_num(&mut self, field: impl Into<String>, value: i32, why: &str) {
        self.push(field, format!("Invalid value: {value}: {why}"));
    }

    fn unsupported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            field,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        );
    }

    fn forbidden(&mut self, field: impl Into<String>, why: &str) {
        self.push(field, format!("Forbidden: {why}"));
    }

    fn required(&mut self, field: impl Into<String>, why: &str) {
        if why.is_empty() {
            self.push(field, "Required value");
        } else {
            self.push(field, format!("Required value: {why}"));
        }
    }

    fn duplicate(&mut self, field: impl Into<String>, value: impl fmt::Debug) {
        self.push(field, format!("Duplicate value: {value:?}"));
    }

    /// Adds `check(value)`'s complaint, if any, as an invalid value of `field`.
    fn check(
        &mut self,
        field: impl Into<String>,
        value: &str,
        check: fn(&str) -> Result<(), String>,
    ) {
        if let Err(why) = check(value) {
            self.invalid(field, value, &why);
        }
    }
}

// ---- names ----

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes' `IsDNS1123Label`: namespaces, port names, endpoint hostnames.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !label_chars_ok(s) {
        return Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                    characters or '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// Kubernetes' `IsDNS1123Subdomain`: EndpointSlice and Node names, `nodeName`.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.split('.').all(label_chars_ok) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                    characters, '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// Kubernetes' `IsDNS1035Label`: Service names (they become DNS labels that must not start
/// with a digit).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !label_chars_ok(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(
            "a DNS-1035 label must consist of lower case alphanumeric characters or \
                    '-', start with an alphabetic character, and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// Kubernetes' `IsValidPortName` (an IANA service name): a named `targetPort`.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

/// Kubernetes' `IsFullyQualifiedDomainName`: a subdomain of at least two labels.
pub fn fqdn(s: &str) -> Result<(), String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    dns1123_subdomain(s)?;
    if !s.contains('.') {
        return Err("should be a domain with at least two segments separated by dots".into());
    }
    Ok(())
}

// ---- numbers and addresses ----

/// Kubernetes' `IsValidPortNum`.
pub fn port_number(port: i32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err("must be between 1 and 65535, inclusive".into())
    }
}

/// Kubernetes' `IsValidIP` for new objects: an IPv4 or IPv6 address in canonical notation
/// (no leading zeros, no zone).
pub fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".to_string())
}

pub fn ipv4(s: &str) -> Result<(), String> {
    match ip(s) {
        Ok(IpAddr::V4(_)) => Ok(()),
        _ => Err("must be a valid IPv4 address".into()),
    }
}

pub fn ipv6(s: &str) -> Result<(), String> {
    match ip(s) {
        Ok(IpAddr::V6(_)) => Ok(()),
        _ => Err("must be a valid IPv6 address".into()),
    }
}

/// Kubernetes' `ValidateNonSpecialIP` (external IPs): a valid address that is not unspecified,
/// loopback, link-local or multicast.
pub fn non_special_ip(s: &str) -> Result<(), String> {
    let addr = ip(s)?;
    let why = if addr.is_unspecified() {
        "may not be unspecified (0.0.0.0, ::)"
    } else if addr.is_loopback() {
        "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    } else if addr.is_multicast() {
        "may not be in the multicast range (224.0.0.0/4, ff00::/8)"
    } else if match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    } {
        "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    } else {
        return Ok(());
    };
    Err(why.into())
}

/// `address/len` as `loadBalancerSourceRanges` takes it: surrounding spaces and host bits are
/// tolerated (both are legacy behaviour the API server keeps for this field).
pub fn source_range(s: &str) -> Result<(), String> {
    let bad = || "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)".to_string();
    let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr = ip(addr).map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let canonical =
        len == "0" || (!len.starts_with('0') && len.bytes().all(|c| c.is_ascii_digit()));
    match len.parse::<u8>() {
        Ok(len) if canonical && len <= max => Ok(()),
        _ => Err(bad()),
    }
}

// ---- objects ----

fn meta_name(errors: &mut Errors, meta: &ObjectMeta, check: fn(&str) -> Result<(), String>) {
    match meta.name.as_deref() {
        None | Some("") => errors.required("metadata.name", "name or generateName is required"),
        Some(name) => errors.check("metadata.name", name, check),
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|n| !n.is_empty()) {
        errors.check("metadata.namespace", ns, dns1123_label);
    }
}

fn protocol(errors: &mut Errors, field: String, protocol: Option<&str>) {
    if let Some(p) = protocol
        && !PROTOCOLS.contains(&p)
    {
        errors.unsupported(field, p, &PROTOCOLS);
    }
}

fn in_node_port_range(errors: &mut Errors, field: String, port: i32) {
    if !NODE_PORT_RANGE.contains(&port) {
        errors.invalid_num(
            field,
            port,
            &format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                NODE_PORT_RANGE.start(),
                NODE_PORT_RANGE.end()
            ),
        );
    }
}

/// The errors the API server would report for this Service (empty: valid).
pub fn service(svc: &Service) -> Vec<FieldError> {
    let mut errors = Errors::default();
    meta_name(&mut errors, &svc.metadata, dns1035_label);
    let default_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !TYPES.contains(&type_) {
        errors.unsupported("spec.type", type_, &TYPES);
    }
    let load_balancer = type_ == "LoadBalancer";
    let has_node_ports = load_balancer || type_ == "NodePort";

    service_ports(&mut errors, spec, has_node_ports, type_);
    cluster_ips(&mut errors, spec, type_);

    const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if families.len() > 2 {
        errors.push(
            "spec.ipFamilies",
            format!("Too many: {}: must have at most 2 items", families.len()),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, family) in families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if !FAMILIES.contains(&family.as_str()) {
            errors.unsupported(field, family, &FAMILIES);
        } else if !seen.insert(family) {
            errors.duplicate(field, family);
        }
    }
    const POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];
    if let Some(policy) = spec.ip_family_policy.as_deref()
        && !POLICIES.contains(&policy)
    {
        errors.unsupported("spec.ipFamilyPolicy", policy, &POLICIES);
    }

    for (i, addr) in spec.external_ips.iter().flatten().enumerate() {
        errors.check(format!("spec.externalIPs[{i}]"), addr, non_special_ip);
    }
    if let Some(addr) = spec.load_balancer_ip.as_deref().filter(|a| !a.is_empty()) {
        errors.check("spec.loadBalancerIP", addr, |s| ip(s).map(drop));
    }
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() && !load_balancer {
        errors.forbidden(
            "spec.loadBalancerSourceRanges",
            "may only be used when `type` is 'LoadBalancer'",
        );
    }
    for (i, range) in ranges.iter().enumerate() {
        errors.check(
            format!("spec.loadBalancerSourceRanges[{i}]"),
            range,
            source_range,
        );
    }

    // kube-proxy's "externally accessible": what external traffic can reach at all.
    let external = has_node_ports || !spec.external_ips.as_deref().unwrap_or_default().is_empty();
    const TRAFFIC_POLICIES: [&str; 2] = ["Cluster", "Local"];
    let policy = spec.external_traffic_policy.as_deref().unwrap_or("");
    if !policy.is_empty() {
        if !TRAFFIC_POLICIES.contains(&policy) {
            errors.unsupported("spec.externalTrafficPolicy", policy, &TRAFFIC_POLICIES);
        } else if !external {
            errors.invalid(
                "spec.externalTrafficPolicy",
                policy,
                "may only be set for externally-accessible services",
            );
        }
    }
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0) {
        let field = "spec.healthCheckNodePort".to_string();
        if !(load_balancer && policy == "Local") {
            errors.forbidden(
                field,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            );
        } else {
            in_node_port_range(&mut errors, field, port);
        }
    }

    session_affinity(&mut errors, spec);
    ingress(&mut errors, svc);
    errors.0
}

fn service_ports(errors: &mut Errors, spec: &ServiceSpec, has_node_ports: bool, type_: &str) {
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut port_protocols = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => errors.required(at("name"), ""),
            None => {}
            Some(name) => {
                errors.check(at("name"), name, dns1123_label);
                if !names.insert(name) {
                    errors.duplicate(at("name"), name);
                }
            }
        }
        if let Err(why) = port_number(p.port) {
            errors.invalid_num(at("port"), p.port, &why);
        }
        protocol(errors, at("protocol"), p.protocol.as_deref());
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        match &p.target_port {
            // 0 and "" are what the API server defaults to `port`.
            None | Some(IntOrString::Int(0)) => {}
            Some(IntOrString::String(s)) if s.is_empty() => {}
            Some(IntOrString::Int(n)) => {
                if let Err(why) = port_number(*n) {
                    errors.invalid_num(at("targetPort"), *n, &why);
                }
            }
            Some(IntOrString::String(s)) => errors.check(at("targetPort"), s, port_name),
        }
        if !port_protocols.insert((p.port, proto)) {
            errors.duplicate(format!("spec.ports[{i}]"), format!("{}/{proto}", p.port));
        }
        if let Some(np) = p.node_port.filter(|n| *n != 0) {
            if type_ == "ClusterIP" {
                errors.forbidden(at("nodePort"), "may not be used when `type` is 'ClusterIP'");
            } else if has_node_ports {
                in_node_port_range(errors, at("nodePort"), np);
                if !node_ports.insert((np, proto)) {
                    errors.duplicate(at("nodePort"), format!("{np}/{proto}"));
                }
            }
        }
    }
}

fn cluster_ips(errors: &mut Errors, spec: &ServiceSpec, type_: &str) {
    let headless_ok = type_ == "ClusterIP";
    let check = |errors: &mut Errors, field: String, value: &str| {
        if value == "None" {
            if !headless_ok {
                errors.invalid(
                    field,
                    value,
                    &format!("may not be set to 'None' for {type_} services"),
                );
            }
        } else if let Err(why) = ip(value) {
            errors.invalid(field, value, &why);
        }
    };
    let cluster_ip = spec.cluster_ip.as_deref().filter(|c| !c.is_empty());
    if let Some(c) = cluster_ip {
        check(errors, "spec.clusterIP".into(), c);
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if ips.len() > 2 {
        errors.push(
            "spec.clusterIPs",
            format!("Too many: {}: must have at most 2 items", ips.len()),
        );
    }
    for (i, c) in ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if c == "None" && i > 0 {
            errors.invalid(field, c, "'None' must be the first and only value");
        } else {
            check(errors, field, c);
        }
    }
    if let (Some(c), Some(first)) = (cluster_ip, ips.first())
        && c != first
    {
        errors.invalid(
            "spec.clusterIPs[0]",
            first,
            "must match `clusterIP` when set",
        );
    }
}

fn session_affinity(errors: &mut Errors, spec: &ServiceSpec) {
    const AFFINITIES: [&str; 2] = ["ClientIP", "None"];
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if !AFFINITIES.contains(&affinity) {
        errors.unsupported("spec.sessionAffinity", affinity, &AFFINITIES);
        return;
    }
    let config = spec.session_affinity_config.as_ref();
    if affinity == "None" {
        if config.is_some() {
            errors.forbidden(
                "spec.sessionAffinityConfig",
                "must not be set when session affinity is None",
            );
        }
        return;
    }
    let timeout = config
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(t) = timeout
        && !(1..=MAX_AFFINITY_TIMEOUT).contains(&t)
    {
        errors.invalid_num(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            &format!("must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"),
        );
    }
}

fn ingress(errors: &mut Errors, svc: &Service) {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    const MODES: [&str; 2] = ["Proxy", "VIP"];
    for (i, entry) in ingress.iter().enumerate() {
        let at = |field: &str| format!("status.loadBalancer.ingress[{i}].{field}");
        let addr = entry.ip.as_deref().filter(|a| !a.is_empty());
        if let Some(addr) = addr {
            errors.check(at("ip"), addr, |s| ip(s).map(drop));
        }
        if let Some(host) = entry.hostname.as_deref().filter(|h| !h.is_empty()) {
            if ip(host).is_ok() {
                errors.invalid(
                    at("hostname"),
                    host,
                    "must be a DNS name, not an IP address",
                );
            } else {
                errors.check(at("hostname"), host, dns1123_subdomain);
            }
        }
        if let Some(mode) = entry.ip_mode.as_deref() {
            if addr.is_none() {
                errors.forbidden(at("ipMode"), "may not be specified when `ip` is not set");
            } else if !MODES.contains(&mode) {
                errors.unsupported(at("ipMode"), mode, &MODES);
            }
        }
    }
}

/// The errors the API server would report for this EndpointSlice (empty: valid).
pub fn endpoint_slice(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut errors = Errors::default();
    meta_name(&mut errors, &slice.metadata, dns1123_subdomain);

    const TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
    let address_check: fn(&str) -> Result<(), String> = match slice.address_type.as_str() {
        "IPv4" => ipv4,
        "IPv6" => ipv6,
        "FQDN" => fqdn,
        "" => {
            errors.required("addressType", "");
            |_| Ok(())
        }
        other => {
            errors.unsupported("addressType", other, &TYPES);
            |_| Ok(())
        }
    };

    let endpoints = slice.endpoints.as_deref().unwrap_or_default();
    if endpoints.len() > MAX_SLICE_ENDPOINTS {
        errors.push(
            "endpoints",
            format!(
                "Too many: {}: must have at most {MAX_SLICE_ENDPOINTS} items",
                endpoints.len()
            ),
        );
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let at = |field: &str| format!("endpoints[{i}].{field}");
        if ep.addresses.is_empty() {
            errors.required(at("addresses"), "must contain at least 1 address");
        } else if ep.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            errors.push(
                at("addresses"),
                format!(
                    "Too many: {}: must have at most {MAX_ENDPOINT_ADDRESSES} items",
                    ep.addresses.len()
                ),
            );
        }
        for (j, addr) in ep.addresses.iter().enumerate() {
            errors.check(
                format!("endpoints[{i}].addresses[{j}]"),
                addr,
                address_check,
            );
        }
        if let Some(node) = ep.node_name.as_deref().filter(|n| !n.is_empty()) {
            errors.check(at("nodeName"), node, dns1123_subdomain);
        }
        if let Some(host) = ep.hostname.as_deref().filter(|h| !h.is_empty()) {
            errors.check(at("hostname"), host, dns1123_label);
        }
    }

    let ports = slice.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_SLICE_PORTS {
        errors.push(
            "ports",
            format!(
                "Too many: {}: must have at most {MAX_SLICE_PORTS} items",
                ports.len()
            ),
        );
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |field: &str| format!("ports[{i}].{field}");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            errors.check(at("name"), name, dns1123_label);
        }
        if !names.insert(name) {
            errors.duplicate(at("name"), name);
        }
        protocol(&mut errors, at("protocol"), p.protocol.as_deref());
        if let Some(port) = p.port
            && let Err(why) = port_number(port)
        {
            errors.invalid_num(at("port"), port, &why);
        }
    }
    errors.0
}

/// The errors the API server would report for this Node (empty: valid), plus one of xlb's own:
/// the `InternalIP` and `ExternalIP` addresses it reads must be IP addresses.
pub fn node(node: &Node) -> Vec<FieldError> {
    let mut errors = Errors::default();
    match node.metadata.name.as_deref() {
        None | Some("") => errors.required("metadata.name", "name or generateName is required"),
        Some(name) => errors.check("metadata.name", name, dns1123_subdomain),
    }
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, a) in addresses.iter().enumerate() {
        let field = format!("status.addresses[{i}]");
        if !seen.insert((a.type_.as_str(), a.address.as_str())) {
            errors.duplicate(field.clone(), format!("{} {}", a.type_, a.address));
        }
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            errors.check(format!("{field}.address"), &a.address, |s| ip(s).map(drop));
        }
    }
    errors.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec_and_status: &str) -> Service {
        let text = format!("metadata: {{name: web, namespace: default}}\n{spec_and_status}");
        yaml_serde::from_str(&text).unwrap()
    }

    /// The fields the errors of a Service with this spec (and status) name.
    fn svc_errors(spec_and_status: &str) -> Vec<String> {
        service(&svc(spec_and_status))
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn assert_one(errors: Vec<String>, expected: &str) {
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(expected), "{errors:?}");
    }

    const LB: &str =
        "spec:\n  type: LoadBalancer\n  ports: [{name: http, port: 80, nodePort: 30080}]\n";

    #[test]
    fn names() {
        for good in ["a", "web-1", "a-b-c"] {
            assert!(dns1035_label(good).is_ok(), "{good}");
            assert!(dns1123_label(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
            assert!(dns1035_label(bad).is_err(), "{bad}");
        }
        // A Service name must not start with a digit; other names may.
        assert!(dns1035_label("1web").is_err());
        assert!(dns1123_label("1web").is_ok());
        assert!(dns1123_subdomain("node-a.example.com").is_ok());
        assert!(dns1123_subdomain(&format!("{}.b", "a".repeat(63))).is_ok());
        for bad in ["", "a..b", ".a", "a.", "A.b", &"a.".repeat(127)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
        assert!(fqdn("db.example.com").is_ok());
        assert!(fqdn("db.example.com.").is_ok());
        assert!(fqdn("db").is_err());
        for good in ["http", "h2c", "web-8080"] {
            assert!(port_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "8080",
            "HTTP",
            "a--b",
            "-http",
            "http-",
            "sixteen-chars-xx",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!(ip("198.18.0.1").is_ok());
        assert!(ip("fd00::1").is_ok());
        for bad in [
            "999.1.2.3",
            "198.18.0",
            "198.18.0.01",
            "fe80::1%eth0",
            "",
            " 1.2.3.4",
        ] {
            assert!(ip(bad).is_err(), "{bad}");
        }
        assert!(ipv4("198.18.0.1").is_ok() && ipv4("fd00::1").is_err());
        assert!(ipv6("fd00::1").is_ok() && ipv6("198.18.0.1").is_err());
        assert!(non_special_ip("198.19.0.1").is_ok());
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert!(non_special_ip(bad).is_err(), "{bad}");
        }
        for good in ["198.18.0.0/15", " 198.18.7.7/24 ", "0.0.0.0/0", "fd00::/8"] {
            assert!(source_range(good).is_ok(), "{good}");
        }
        for bad in [
            "198.18.7.7",
            "198.18.0.0/33",
            "198.18.0.0/",
            "1.2.3.4/024",
            "x/8",
            "fd00::/129",
        ] {
            assert!(source_range(bad).is_err(), "{bad}");
        }
        assert!(port_number(1).is_ok() && port_number(65535).is_ok());
        assert!(port_number(0).is_err() && port_number(65536).is_err() && port_number(-1).is_err());
    }

    #[test]
    fn a_plain_service_is_valid() {
        assert!(svc_errors(LB).is_empty());
        assert!(svc_errors("").is_empty());
        let full = "spec:
  type: LoadBalancer
  clusterIP: 198.19.128.10
  clusterIPs: [198.19.128.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalIPs: [198.19.0.5]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  loadBalancerSourceRanges: [198.18.0.0/15]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: web, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353, nodePort: 30053}
status:
  loadBalancer:
    ingress: [{ip: 198.19.255.1, ipMode: VIP}, {hostname: lb.example.com}]
";
        assert!(svc_errors(full).is_empty(), "{:?}", svc_errors(full));
    }

    #[test]
    fn service_names() {
        let mut s = svc(LB);
        s.metadata.name = Some("1web".into());
        assert_eq!(service(&s)[0].field, "metadata.name");
        s.metadata.name = None;
        assert_eq!(service(&s)[0].field, "metadata.name");
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("Prod".into());
        assert_eq!(service(&s)[0].field, "metadata.namespace");
    }

    #[test]
    fn service_type() {
        assert_one(
            svc_errors("spec: {type: Balancer}"),
            "spec.type: Unsupported value: \"Balancer\"",
        );
    }

    #[test]
    fn service_ports() {
        let port = |p: &str| svc_errors(&format!("spec:\n  type: NodePort\n  ports: [{p}]\n"));
        assert_one(
            port("{port: 70000}"),
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        );
        assert_one(port("{port: 0}"), "spec.ports[0].port: Invalid value: 0");
        assert_one(
            port("{port: 80, protocol: ICMP}"),
            "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        );
        assert!(port("{port: 80, protocol: SCTP}").is_empty());
        assert_one(
            port("{port: 80, targetPort: 70000}"),
            "spec.ports[0].targetPort",
        );
        assert_one(
            port("{port: 80, targetPort: HTTP}"),
            "spec.ports[0].targetPort",
        );
        assert!(port("{port: 80, targetPort: 0}").is_empty());
        // Names: required with several ports, DNS labels, unique.
        assert_one(
            port("{port: 80}, {name: b, port: 81}"),
            "spec.ports[0].name: Required value",
        );
        assert_one(
            port("{name: Web, port: 80}"),
            "spec.ports[0].name: Invalid value",
        );
        assert_one(
            port("{name: a, port: 80}, {name: a, port: 81}"),
            "spec.ports[1].name: Duplicate value",
        );
        // The same port and protocol twice; the same number on two protocols is fine.
        assert_one(
            port("{name: a, port: 80}, {name: b, port: 80, protocol: TCP}"),
            "spec.ports[1]: Duplicate value: \"80/TCP\"",
        );
        assert!(port("{name: a, port: 53, protocol: UDP}, {name: b, port: 53}").is_empty());
    }

    #[test]
    fn node_ports() {
        let port = |t: &str, p: &str| svc_errors(&format!("spec:\n  type: {t}\n  ports: [{p}]\n"));
        assert!(port("NodePort", "{port: 80, nodePort: 30000}").is_empty());
        assert!(port("NodePort", "{port: 80, nodePort: 32767}").is_empty());
        assert_one(
            port("NodePort", "{port: 80, nodePort: 29999}"),
            "spec.ports[0].nodePort: Invalid value: 29999: provided port is not in the valid range. The range of valid ports is 30000-32767",
        );
        assert_one(
            port("LoadBalancer", "{port: 80, nodePort: 70000}"),
            "spec.ports[0].nodePort",
        );
        assert_one(
            port("ClusterIP", "{port: 80, nodePort: 30080}"),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        );
        assert_one(
            port(
                "NodePort",
                "{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}",
            ),
            "spec.ports[1].nodePort: Duplicate value",
        );
    }

    #[test]
    fn cluster_ips() {
        let spec = |s: &str| svc_errors(&format!("spec: {{ports: [{{port: 80}}], {s}}}"));
        assert!(spec("clusterIP: None, clusterIPs: [None]").is_empty());
        assert_one(
            spec("clusterIP: 10.0.0.300"),
            "spec.clusterIP: Invalid value: \"10.0.0.300\"",
        );
        assert_one(spec("clusterIPs: [10.0.0.1, nope]"), "spec.clusterIPs[1]");
        assert_one(spec("clusterIPs: [10.0.0.1, None]"), "spec.clusterIPs[1]");
        assert_one(
            spec("clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2]"),
            "spec.clusterIPs[0]",
        );
        assert_one(
            spec("type: NodePort, clusterIP: None"),
            "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        );
    }

    #[test]
    fn ip_families() {
        let spec = |s: &str| svc_errors(&format!("spec: {{ports: [{{port: 80}}], {s}}}"));
        assert!(spec("ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack").is_empty());
        assert_one(
            spec("ipFamilies: [IPv5]"),
            "spec.ipFamilies[0]: Unsupported value",
        );
        assert_one(
            spec("ipFamilies: [IPv4, IPv4]"),
            "spec.ipFamilies[1]: Duplicate value",
        );
        assert_one(
            spec("ipFamilyPolicy: DualStack"),
            "spec.ipFamilyPolicy: Unsupported value",
        );
    }

    #[test]
    fn external_and_load_balancer_addresses() {
        let spec = |s: &str| {
            svc_errors(&format!(
                "spec: {{type: LoadBalancer, ports: [{{port: 80}}], {s}}}"
            ))
        };
        assert_one(
            spec("externalIPs: [198.19.0.1, 999.1.2.3]"),
            "spec.externalIPs[1]",
        );
        assert_one(
            spec("externalIPs: [127.0.0.1]"),
            "spec.externalIPs[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range",
        );
        assert_one(spec("loadBalancerIP: 198.19.0.256"), "spec.loadBalancerIP");
        assert!(spec("loadBalancerIP: 198.19.0.1").is_empty());
        assert_one(
            spec("loadBalancerSourceRanges: [198.18.0.0/15, 198.18.0.1]"),
            "spec.loadBalancerSourceRanges[1]",
        );
        assert_one(
            svc_errors(
                "spec: {type: NodePort, ports: [{port: 80}], loadBalancerSourceRanges: [198.18.0.0/15]}",
            ),
            "spec.loadBalancerSourceRanges: Forbidden",
        );
        let status = |s: &str| {
            svc_errors(&format!(
                "{LB}status: {{loadBalancer: {{ingress: [{s}]}}}}\n"
            ))
        };
        assert_one(
            status("{ip: 999.1.2.3}"),
            "status.loadBalancer.ingress[0].ip: Invalid value: \"999.1.2.3\": must be a valid IP address",
        );
        assert_one(
            status("{ip: 198.19.0.1, ipMode: Direct}"),
            "status.loadBalancer.ingress[0].ipMode: Unsupported",
        );
        assert_one(
            status("{hostname: lb.example.com, ipMode: VIP}"),
            "status.loadBalancer.ingress[0].ipMode: Forbidden",
        );
        assert_one(
            status("{hostname: 198.19.0.1}"),
            "status.loadBalancer.ingress[0].hostname",
        );
        assert_one(
            status("{hostname: LB_1}"),
            "status.loadBalancer.ingress[0].hostname",
        );
        assert!(status("{ip: 198.19.0.1, ipMode: Proxy}").is_empty());
    }

    #[test]
    fn traffic_policy_and_health_check_port() {
        let spec = |s: &str| svc_errors(&format!("spec: {{ports: [{{port: 80}}], {s}}}"));
        assert!(spec("type: NodePort, externalTrafficPolicy: Local").is_empty());
        assert!(spec("externalIPs: [198.19.0.1], externalTrafficPolicy: Cluster").is_empty());
        assert_one(
            spec("type: NodePort, externalTrafficPolicy: Global"),
            "spec.externalTrafficPolicy: Unsupported",
        );
        assert_one(
            spec("externalTrafficPolicy: Local"),
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
        );
        assert!(
            spec("type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32100")
                .is_empty()
        );
        assert_one(
            spec("type: LoadBalancer, healthCheckNodePort: 32100"),
            "spec.healthCheckNodePort: Forbidden",
        );
        assert_one(
            spec("type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 80"),
            "spec.healthCheckNodePort: Invalid value: 80",
        );
    }

    #[test]
    fn session_affinity() {
        let spec = |s: &str| svc_errors(&format!("spec: {{ports: [{{port: 80}}], {s}}}"));
        assert!(spec("sessionAffinity: ClientIP").is_empty());
        assert!(spec("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}").is_empty());
        assert_one(
            spec("sessionAffinity: Sticky"),
            "spec.sessionAffinity: Unsupported",
        );
        for t in [0, 86401, -5] {
            assert_one(
                spec(&format!(
                    "sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}"
                )),
                &format!("spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}"),
            );
        }
        assert_one(
            spec("sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"),
            "spec.sessionAffinityConfig: Forbidden",
        );
    }

    #[test]
    fn every_error_is_reported() {
        let errors = service(&svc(
            "spec: {type: NodePort, ports: [{name: a, port: 70000}, {name: b, port: 80, nodePort: 1}]}",
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            describe(&errors),
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive; \
             spec.ports[1].nodePort: Invalid value: 1: provided port is not in the valid range. \
             The range of valid ports is 30000-32767"
        );
    }

    fn slice_errors(body: &str) -> Vec<String> {
        let text = format!("metadata: {{name: web-abc, namespace: default}}\n{body}");
        let slice: EndpointSlice = yaml_serde::from_str(&text).unwrap();
        endpoint_slice(&slice)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn endpoint_slices() {
        let ok = "addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [198.18.10.11]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a.example
  hostname: web-0
";
        assert!(slice_errors(ok).is_empty(), "{:?}", slice_errors(ok));
        assert_one(
            slice_errors("addressType: IPv5"),
            "addressType: Unsupported value",
        );
        assert_one(
            slice_errors("addressType: ''"),
            "addressType: Required value",
        );
        let eps = |t: &str, e: &str| slice_errors(&format!("addressType: {t}\nendpoints: [{e}]"));
        assert_one(
            eps("IPv4", "{addresses: [999.1.2.3]}"),
            "endpoints[0].addresses[0]: Invalid value: \"999.1.2.3\": must be a valid IPv4 address",
        );
        assert_one(
            eps("IPv4", "{addresses: [fd00::1]}"),
            "endpoints[0].addresses[0]",
        );
        assert!(eps("IPv6", "{addresses: [fd00::1]}").is_empty());
        assert_one(
            eps("IPv6", "{addresses: [198.18.0.1]}"),
            "endpoints[0].addresses[0]",
        );
        assert!(eps("FQDN", "{addresses: [db.example.com]}").is_empty());
        assert_one(
            eps("FQDN", "{addresses: [db]}"),
            "endpoints[0].addresses[0]",
        );
        assert_one(
            eps("IPv4", "{addresses: []}"),
            "endpoints[0].addresses: Required value",
        );
        let many: Vec<String> = (0..101).map(|i| format!("198.18.0.{}", i % 250)).collect();
        assert_one(
            eps("IPv4", &format!("{{addresses: [{}]}}", many.join(","))),
            "endpoints[0].addresses: Too many: 101",
        );
        assert_one(
            eps("IPv4", "{addresses: [198.18.0.1], nodeName: Node_A}"),
            "endpoints[0].nodeName",
        );
        assert_one(
            eps("IPv4", "{addresses: [198.18.0.1], hostname: a.b}"),
            "endpoints[0].hostname",
        );
        // Conditions are booleans: a wrong type never gets this far (the parser refuses it).
        let bad: Result<EndpointSlice, _> = yaml_serde::from_str(
            "metadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [198.18.0.1], conditions: {ready: maybe}}]",
        );
        assert!(bad.is_err());

        let ports = |p: &str| slice_errors(&format!("addressType: IPv4\nports: [{p}]"));
        assert_one(
            ports("{name: http, port: 70000}"),
            "ports[0].port: Invalid value: 70000",
        );
        assert_one(
            ports("{name: http, port: 80, protocol: TCPX}"),
            "ports[0].protocol: Unsupported",
        );
        assert_one(
            ports("{name: HTTP, port: 80}"),
            "ports[0].name: Invalid value",
        );
        assert_one(
            ports("{name: a, port: 80}, {name: a, port: 81}"),
            "ports[1].name: Duplicate value",
        );
        assert_one(
            ports("{port: 80}, {port: 81}"),
            "ports[1].name: Duplicate value: \"\"",
        );
        assert!(ports("{name: a}").is_empty());

        let mut s: EndpointSlice =
            yaml_serde::from_str("metadata: {name: Web.1}\naddressType: IPv4").unwrap();
        assert_eq!(endpoint_slice(&s)[0].field, "metadata.name");
        s.metadata.name = Some("web.1".into());
        assert!(endpoint_slice(&s).is_empty());
    }

    #[test]
    fn nodes() {
        let errors = |body: &str| -> Vec<String> {
            let n: Node =
                yaml_serde::from_str(&format!("metadata: {{name: node-a}}\n{body}")).unwrap();
            node(&n).into_iter().map(|e| e.to_string()).collect()
        };
        assert!(errors("status: {addresses: [{type: InternalIP, address: 198.18.0.11}, {type: Hostname, address: node-a}]}").is_empty());
        assert_one(
            errors("status: {addresses: [{type: InternalIP, address: 198.18.0.300}]}"),
            "status.addresses[0].address: Invalid value: \"198.18.0.300\"",
        );
        assert_one(
            errors("status: {addresses: [{type: ExternalIP, address: node-a}]}"),
            "status.addresses[0].address",
        );
        assert_one(
            errors(
                "status: {addresses: [{type: InternalIP, address: 198.18.0.1}, {type: InternalIP, address: 198.18.0.1}]}",
            ),
            "status.addresses[1]: Duplicate value",
        );
        let n: Node = yaml_serde::from_str("metadata: {name: Node_A}").unwrap();
        assert_eq!(node(&n)[0].field, "metadata.name");
    }
}
