//! The `detcd` binary: etcd's flags -> `Config` -> `server::run`, until SIGINT or SIGTERM.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    use detcd::config::{Config, Invocation, HELP};
    use std::process::ExitCode;

    detcd::env::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_args(&args) {
        Ok(Invocation::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run(config)) => *config,
        Err(error) => {
            eprintln!("detcd: {error}\nRun 'detcd --help' for the flags.");
            return ExitCode::from(2);
        }
    };
    // One thread runs every task of the member; blocking work (reads, durable commits) goes to
    // tokio's blocking pool as before. On this kind of machine (2 shared vCPUs) a task woken
    // on another worker costs a futex wake and a context switch, and tasks of one request
    // (gRPC, Raft core, log writer, apply) wake each other several times: the multi-threaded
    // runtime spent 15-25 % more CPU per request for 1-15 % less throughput (README,
    // "Performance": one thread for the member's tasks).
    // Before it sleeps, the thread polls for a while if it was woken soon after the last time
    // (`env::idle`): a wake-up costs as much as a third of a one-client request here.
    let runtime =
        detcd::env::idle::build(tokio::runtime::Builder::new_current_thread().enable_all());
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("detcd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let disk = detcd::env::Disk::Dir(config.data_dir.clone());
        let name = config.name.clone();
        let data_dir = config.data_dir.display().to_string();
        let client_urls = config.advertise_client_urls.join(",");
        let peer_urls = config.initial_advertise_peer_urls.join(",");
        detcd::server::run(
            config,
            disk,
            detcd::env::Clock::new(),
            detcd::env::shutdown_signal(),
            |node, _listeners| {
                detcd::env::trim_allocator();
                eprintln!(
                    "detcd: member {:x} ({name}) of cluster {:x}, data in {data_dir}\n\
                     detcd: serving clients on {client_urls}, peers on {peer_urls}",
                    node.id, node.cluster_id
                );
            },
        )
        .await
    });
    match result {
        Ok(()) => {
            eprintln!("detcd: stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("detcd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The binary is for real mode; simulations start members through `detcd::server::run`.
#[cfg(madsim)]
fn main() {
    eprintln!("detcd: this binary was built with --cfg madsim; build it without to run a server");
    std::process::exit(2);
}
