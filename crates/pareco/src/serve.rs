//! `pareco serve`: a directory tree for pareco clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pareco_engine::serve::{Access, TreeService};
use pareco_engine::tree::BlockingTree;
use pareco_net::{Security, ServerConfig, ServerStats, TokenKey};

use crate::cli::ServeArgs;
use crate::{security, shutdown_signal, token};

pub async fn run(args: ServeArgs) -> Result<()> {
    // Everything that can fail first: a token is made up (and printed) only
    // for a server that runs.
    let mut root =
        pareco_fs::FsTree::open(&args.root).with_context(|| format!("cannot serve {}", args.root.display()))?;
    if security(&args.token) == Security::Encrypted {
        // Every request arrives through AES-GCM, which proves what it
        // carries: data goes both ways without checksums.
        root = root.trust_transit();
    }
    if let Some(dir) = &args.state_dir {
        crate::sync::state_dir_outside(dir, &[&args.root])?;
        root.keep_digests_in(dir).with_context(|| format!("state directory {}", dir.display()))?;
    }
    let digests = root.cache().clone();
    let access = match (args.read_only, args.write_only) {
        (true, _) => Access::ReadOnly,
        (_, true) => Access::WriteOnly,
        _ => Access::ReadWrite,
    };
    let service = Arc::new(TreeService::new(BlockingTree::new(root, 32), access));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let token = token::for_server(args.token.token_file.as_deref())?;
    let stats = Arc::new(ServerStats::default());
    crate::metrics::serve(args.metrics.metrics_listen, {
        let stats = stats.clone();
        move |f| server_metrics(&stats, f)
    })
    .await?;
    // Handlers first: a signal that arrives right after the announcement
    // must drain the server, not kill it.
    let shutdown = shutdown_signal()?;
    println!("listening on {local}");
    use std::io::Write;
    std::io::stdout().flush()?;
    tracing::info!(root = %args.root.display(), ?access, "serving");
    let mut config = ServerConfig::new(TokenKey::from_token(token.as_bytes()));
    config.security = security(&args.token);
    config.compression = args.compress;
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout.max(1));
    config.stats = stats;
    if config.security == Security::Plaintext {
        tracing::warn!("--insecure-no-encryption: data from and to clients travels unencrypted");
    }
    pareco_net::serve(listener, config, service, shutdown).await;
    if let Err(e) = digests.save() {
        tracing::warn!("cannot save the digest cache: {e}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// What `--metrics-listen` shows of a server.
fn server_metrics(s: &ServerStats, f: &mut crate::metrics::Families) {
    use std::sync::atomic::Ordering::Relaxed;
    f.counter("pareco_wire_sent_bytes", "Bytes written to client connections.", s.wire.sent.load(Relaxed));
    f.counter("pareco_wire_received_bytes", "Bytes read from client connections.", s.wire.received.load(Relaxed));
    f.gauge("pareco_connections", "Client connections authenticated and open now.", s.open.load(Relaxed));
    f.counter(
        "pareco_connections_accepted",
        "Client connections accepted (before authentication).",
        s.accepted.load(Relaxed),
    );
    f.counter("pareco_requests", "Requests answered.", s.requests.load(Relaxed));
    for (kind, n) in [
        ("refused", s.refused.load(Relaxed)),
        ("handshake_timeout", s.timed_out.load(Relaxed)),
        ("over_limit", s.over_limit.load(Relaxed)),
    ] {
        f.counter_with(
            "pareco_errors",
            "Client connections closed without being served, by kind.",
            vec![("kind", kind.to_owned())],
            n,
        );
    }
}
