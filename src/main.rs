//! The `duet` command line: the daemon and the tools around it.
use clap::{Parser, Subcommand};
use duet::config::{self, Config};
use duet::status::client;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_CONFIG: &str = "/etc/duet/duet.toml";

#[derive(Parser)]
#[command(name = "duet", version, about = "Two servers, one virtual IP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Which [[node]] this is (default: the one whose address is local).
        #[arg(long)]
        node: Option<String>,
    },
    /// Serve the first-boot setup page until this node is set up, then exit
    /// (what an appliance without a usable key does; see README).
    Setup {
        /// Where the submitted config is written (its key_file and
        /// admin_token_file get a new key and token; `node` next to it
        /// gets the node's name).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Validate a config file: exit 0, or print every problem with line:column.
    CheckConfig {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the local daemon's view of the cluster.
    Status {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Status address (default: cluster.status_listen of the config).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Stop sending new connections to a backend; established ones continue.
    Drain(AdminArgs),
    /// Undo `drain`.
    Undrain(AdminArgs),
    /// Planned switchover: the director hands the VIP to its peer.
    Failover {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the local daemon read its config file again (as SIGHUP does)
    /// and say whether it took it.
    Reload {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Appliance: install an upgrade archive (image/out/upgrade.tar) into
    /// the box's inactive boot slot and boot it once; it stays only if its
    /// daemon hears its peer, else the box returns to the current slot.
    Upgrade {
        file: PathBuf,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Configure a plain real server: VIP on lo and the ARP sysctls.
    Realserver {
        #[arg(value_parser = ["up", "down"])]
        action: String,
        /// Repeat (or separate with commas) for a server behind several VIPs.
        #[arg(long, required = true, value_delimiter = ',')]
        vip: Vec<Ipv4Addr>,
        #[arg(long, default_value = "eth0")]
        interface: String,
    },
    /// Print the duet.toml equivalent of an ldirectord.cf (and ha.cf).
    ImportLdirectord {
        ldirectord_cf: PathBuf,
        ha_cf: Option<PathBuf>,
    },
    /// Print the duet.toml equivalent of a Perlbal config (and heartbeat's
    /// ha.cf and haresources).
    ImportPerlbal {
        perlbal_conf: PathBuf,
        ha_cf: Option<PathBuf>,
        haresources: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct AdminTarget {
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// File holding the admin token (default: cluster.admin_token_file).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AdminArgs {
    backend: String,
    #[command(flatten)]
    target: AdminTarget,
}

fn main() -> ExitCode {
    // As PID 1 of the appliance image, duet first sets the machine up, then
    // runs as `duet run` on the config it found (src/appliance/).
    let cli = if duet::appliance::is_pid1() {
        match duet::appliance::boot() {
            Ok(config) => {
                let mut args = vec![
                    "duet".into(),
                    "run".into(),
                    "-c".into(),
                    config.into_os_string(),
                ];
                if let Some(node) = duet::appliance::cmdline_node() {
                    args.extend(["--node".into(), node.into()]);
                }
                Cli::parse_from(args)
            }
            Err(e) => duet::appliance::rescue(&e.to_string()),
        }
    } else {
        Cli::parse()
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| format!("invalid configuration:\n{e}"))
}

/// Where the local daemon's status server answers: a wildcard listen address
/// is reached on loopback.
fn status_addr(config: &std::path::Path, addr: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(a) = addr {
        return Ok(a);
    }
    let mut a = load(config)?.cluster.status_listen;
    if a.ip().is_unspecified() {
        a.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Ok(a)
}

fn admin(t: &AdminTarget, path: &str) -> Result<(), String> {
    let (addr, token) = admin_target(t)?;
    let (code, body) = client::request(addr, "POST", path, Some(&token), Duration::from_secs(5))?;
    answered(code, &body)
}

fn answered(code: u16, body: &str) -> Result<(), String> {
    if code == 200 {
        println!("{}", body.trim());
        Ok(())
    } else {
        Err(format!("{code}: {}", body.trim()))
    }
}

/// The status address and admin token an admin command uses.
fn admin_target(t: &AdminTarget) -> Result<(SocketAddr, String), String> {
    let addr = status_addr(&t.config, t.addr)?;
    let token_file = match &t.token_file {
        Some(f) => f.clone(),
        None => load(&t.config)?
            .cluster
            .admin_token_file
            .map(|s| s.into_inner())
            .ok_or("no --token-file and no cluster.admin_token_file")?,
    };
    let token = String::from_utf8_lossy(&config::read_secret(&token_file)?).into_owned();
    Ok((addr, token))
}

/// Sends the archive whole; the box verifies it before writing anything.
fn upgrade(file: &std::path::Path, t: &AdminTarget) -> Result<(), String> {
    let archive = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let max = duet::appliance::upgrade::MAX_ARCHIVE;
    if archive.len() > max {
        return Err(format!(
            "{}: {} bytes, more than an upgrade may have ({max})",
            file.display(),
            archive.len()
        ));
    }
    let (addr, token) = admin_target(t)?;
    let (code, body) = client::request_with_bytes(
        addr,
        "POST",
        "/api/upgrade",
        Some(&token),
        Some("application/x-tar"),
        &archive,
        Duration::from_secs(180),
    )?;
    answered(code, &body)
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Run { config, node } => {
            let cfg = load(&config)?;
            duet::sys::daemon::run(cfg, &config, node.as_deref()).map_err(|e| e.to_string())
        }
        Cmd::Setup { config, listen } => {
            let base = config
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let target = duet::appliance::setup::Target {
                config: config.clone(),
                node: Some(base.join("node")),
                base,
                data_key: None,
            };
            let code = duet::appliance::setup::setup_code().map_err(|e| e.to_string())?;
            eprintln!("duet setup: open http://{listen}/setup with setup code {code}");
            let node = duet::appliance::setup::serve(listen, &target, &code)
                .map_err(|e| format!("setup server on {listen}: {e}"))?;
            println!("set up as {node}: {}", config.display());
            Ok(())
        }
        Cmd::CheckConfig { config } => {
            load(&config)?;
            println!("{}: OK", config.display());
            Ok(())
        }
        Cmd::Status { config, json, addr } => {
            let addr = status_addr(&config, addr)?;
            let (code, body) =
                client::request(addr, "GET", "/api/status", None, Duration::from_secs(3))?;
            if code != 200 {
                return Err(format!("status server answered {code}: {}", body.trim()));
            }
            if json {
                println!("{}", body.trim());
            } else {
                print_status(&body)?;
            }
            Ok(())
        }
        Cmd::Drain(a) => admin(&a.target, &format!("/api/backends/{}/drain", a.backend)),
        Cmd::Undrain(a) => admin(&a.target, &format!("/api/backends/{}/undrain", a.backend)),
        Cmd::Failover { target } => admin(&target, "/api/failover"),
        Cmd::Reload { target } => admin(&target, "/api/reload"),
        Cmd::Upgrade { file, target } => upgrade(&file, &target),
        Cmd::Realserver {
            action,
            vip,
            interface,
        } => duet::sys::realserver(&action, &vip, &interface),
        Cmd::ImportLdirectord {
            ldirectord_cf,
            ha_cf,
        } => {
            let ld = read(&ldirectord_cf)?;
            let ha = ha_cf.as_deref().map(read).transpose()?;
            print_imported(&duet::import::import(&ld, ha.as_deref()));
            Ok(())
        }
        Cmd::ImportPerlbal {
            perlbal_conf,
            ha_cf,
            haresources,
        } => {
            let pb = read(&perlbal_conf)?;
            let ha = ha_cf.as_deref().map(read).transpose()?;
            let res = haresources.as_deref().map(read).transpose()?;
            print_imported(&duet::import::import_perlbal(
                &pb,
                ha.as_deref(),
                res.as_deref(),
            ));
            Ok(())
        }
    }
}

fn read(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The config on stdout, what to review on stderr.
fn print_imported(out: &duet::import::Imported) {
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", out.toml);
}

fn print_status(body: &str) -> Result<(), String> {
    let r: duet::status::model::StatusReport =
        serde_json::from_str(body).map_err(|e| format!("bad status JSON: {e}"))?;
    print!("{}", duet::status::text::render(&r, duet::store::now_ms()));
    Ok(())
}
