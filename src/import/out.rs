//! The duet.toml an importer writes, as values the toml crate serializes:
//! the importers decide what goes in, this module how it is written. Each
//! section is serialized on its own so a comment (where in the source it
//! came from) can stand before it.
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Serialize)]
pub struct Cluster {
    pub vip: Vips,
    pub interface: String,
    pub vrid: u8,
    pub key_file: &'static str,
    pub status_listen: &'static str,
    pub state_dir: &'static str,
}

impl Cluster {
    /// The defaults both importers write, for these VIPs on `interface`.
    pub fn new(vips: &[Ipv4Addr], interface: String) -> Cluster {
        let vip = match vips {
            [one] => Vips::One(one.to_string()),
            many => Vips::Many(many.iter().map(|v| v.to_string()).collect()),
        };
        Cluster {
            vip,
            interface,
            vrid: 1,
            key_file: "/etc/duet/key",
            status_listen: "0.0.0.0:8080",
            state_dir: "/var/lib/duet",
        }
    }
}

/// `vip = "a"`, or a list when there are several.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Vips {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub priority: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Serialize)]
pub struct Heartbeat {
    pub interval: String,
    pub dead_after: String,
    pub preempt: bool,
    pub ping: Vec<String>,
}

/// Every key either importer may set; unset ones are left out.
#[derive(Serialize, Default)]
pub struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    pub scheduler: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence_netmask: Option<String>,
    pub serve_local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_client: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_backend: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_idle_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<Route>,
}

/// `"addr"`, or `{ address = "addr", weight = n }`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Backend {
    Plain(String),
    Weighted { address: String, weight: u32 },
}

#[derive(Serialize, Default)]
pub struct Check {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Keys of one check kind only (`protocol`, `name`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub interval: String,
    pub timeout: String,
    pub rise: u32,
    pub fall: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiescent: Option<bool>,
}

#[derive(Serialize)]
pub struct Route {
    pub host: String,
    pub backends: Vec<String>,
}

/// A whole duet.toml: `header` lines as comments, then the sections; each
/// service may bring its own comment line.
pub struct Document {
    pub header: Vec<String>,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    pub heartbeat: Heartbeat,
    pub services: Vec<(String, Service)>,
}

impl Document {
    pub fn render(&self) -> String {
        #[derive(Serialize)]
        struct Section<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<&'a Cluster>,
            #[serde(skip_serializing_if = "Option::is_none")]
            heartbeat: Option<&'a Heartbeat>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            node: &'a [Node],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            service: &'a [&'a Service],
        }
        let empty = Section {
            cluster: None,
            heartbeat: None,
            node: &[],
            service: &[],
        };
        let mut out = String::new();
        for line in &self.header {
            out.push_str(&format!("# {line}\n"));
        }
        fn section(out: &mut String, s: &Section) {
            out.push('\n');
            // Plain data with string keys: serialization cannot fail.
            out.push_str(&toml::to_string(s).unwrap_or_default());
        }
        section(
            &mut out,
            &Section {
                cluster: Some(&self.cluster),
                ..empty
            },
        );
        for n in &self.nodes {
            section(
                &mut out,
                &Section {
                    node: std::slice::from_ref(n),
                    ..empty
                },
            );
        }
        section(
            &mut out,
            &Section {
                heartbeat: Some(&self.heartbeat),
                ..empty
            },
        );
        for (comment, s) in &self.services {
            out.push_str(&format!("\n# {comment}"));
            section(
                &mut out,
                &Section {
                    service: &[s],
                    ..empty
                },
            );
        }
        out
    }
}

/// "5s", or "1500ms" when not whole seconds.
pub fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shape_as_toml() {
        let doc = Document {
            header: vec!["Imported by a test.".into()],
            cluster: Cluster::new(&[Ipv4Addr::new(198, 18, 0, 100)], "eth0".into()),
            nodes: vec![Node {
                name: "lb1".into(),
                address: "198.18.0.1".into(),
                priority: 150,
                weight: Some(2),
            }],
            heartbeat: Heartbeat {
                interval: duration(100),
                dead_after: duration(1500),
                preempt: false,
                ping: vec![],
            },
            services: vec![(
                "line 3".into(),
                Service {
                    port: 80,
                    scheduler: "wrr".into(),
                    backends: Some(vec![
                        Backend::Plain("198.18.0.20".into()),
                        Backend::Weighted {
                            address: "198.18.0.21".into(),
                            weight: 3,
                        },
                    ]),
                    check: Some(Check {
                        kind: "dns",
                        extra: BTreeMap::from([("name", "example.".to_string())]),
                        interval: duration(5000),
                        timeout: duration(3000),
                        rise: 1,
                        fall: 2,
                        ..Check::default()
                    }),
                    route: vec![Route {
                        host: "a.example".into(),
                        backends: vec!["198.18.0.22:80".into()],
                    }],
                    ..Service::default()
                },
            )],
        };
        let text = doc.render();
        assert!(text.starts_with("# Imported by a test.\n"), "{text}");
        assert!(text.contains("\n# line 3\n[[service]]\n"), "{text}");
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["cluster"]["vip"].as_str(), Some("198.18.0.100"));
        assert_eq!(v["node"][0]["weight"].as_integer(), Some(2));
        assert_eq!(v["heartbeat"]["dead_after"].as_str(), Some("1500ms"));
        let s = &v["service"][0];
        assert_eq!(s["backends"][0].as_str(), Some("198.18.0.20"));
        assert_eq!(s["backends"][1]["weight"].as_integer(), Some(3));
        assert_eq!(s["check"]["name"].as_str(), Some("example."));
        assert_eq!(s["route"][0]["host"].as_str(), Some("a.example"));
        assert!(s.get("protocol").is_none());
    }
}
