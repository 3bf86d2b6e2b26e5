//! `conduit-bench`: a load generator for any Matrix homeserver's client-server API, so the
//! same run can measure conduit and Synapse side by side. See `docs/benchmarks.md`.

mod appservice;
mod bigroom;
mod client;
mod federation;
mod gateway;
mod process;
mod report;
mod scenarios;

use std::{
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use client::Http;
use report::{Outcome, Run};
use scenarios::Plan;

const SCENARIOS: &[&str] = &[
    "register",
    "login",
    "whoami",
    "send",
    "send-concurrent",
    "send-rooms",
    "send-sync",
    "initial-sync",
    "messages",
    "sliding-sync",
    "push",
    "appservice",
    "fan-out",
    "big-room",
    "fed-inbound",
    "fed-fan-out",
    "fed-join",
];

#[derive(Parser)]
#[command(about = "Load generator for a Matrix homeserver's client-server API", args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a markdown table comparing two runs saved with --json.
    Compare { first: PathBuf, second: PathBuf },
    /// Write the median of several runs saved with --json (each number's median, the spread
    /// in the notes) as one run.
    Median {
        /// Where to write the median run.
        #[arg(long)]
        out: PathBuf,
        /// The runs.
        runs: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Base URL of the homeserver, e.g. http://127.0.0.1:6167
    #[arg(long)]
    url: Option<String>,
    /// Base URL the send → sync scenario's long-poll goes to (the send goes to --url): another
    /// process sharing the server's database, to time the wake-up across processes.
    #[arg(long)]
    sync_url: Option<String>,
    /// Name of the server in the output and JSON.
    #[arg(long, default_value = "server")]
    label: String,
    /// The server's process ID, for its memory; found by the URL's port when omitted.
    #[arg(long)]
    pid: Option<u32>,
    /// Comma-separated scenarios to run, in this order: register, login, whoami, send,
    /// send-concurrent, send-rooms, send-sync, initial-sync, messages, sliding-sync, push,
    /// appservice, fan-out, big-room, fed-inbound, fed-fan-out, fed-join. Default: all but fan-out,
    /// big-room and the federation ones (appservice only with --appservice). Given twice, the
    /// last one counts, as for every option.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    scenarios: Vec<String>,
    /// Users to register (at least as many as --clients and --members - 1 are registered).
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// whoami requests.
    #[arg(long, default_value_t = 2000)]
    whoami: usize,
    /// Messages the single sequential client sends.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Concurrent clients (also the concurrency of set-up work).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Messages each concurrent client sends.
    #[arg(long, default_value_t = 500)]
    per_client: usize,
    /// Send → sync rounds.
    #[arg(long, default_value_t = 200)]
    sync_rounds: usize,
    /// Rooms of the initial-sync user.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Members of each of those rooms, the user included.
    #[arg(long, default_value_t = 20)]
    members: usize,
    /// Messages in each of those rooms.
    #[arg(long, default_value_t = 50)]
    room_messages: usize,
    /// Initial syncs timed, with and without lazy-loaded members each.
    #[arg(long, default_value_t = 5)]
    sync_runs: usize,
    /// Messages in the room that /messages pages back through.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// Events per /messages page.
    #[arg(long, default_value_t = 100)]
    page: u32,
    /// Rooms of the sliding-sync user (named, one message each).
    #[arg(long, default_value_t = 1000)]
    sss_rooms: usize,
    /// Sliding-sync requests timed per kind.
    #[arg(long, default_value_t = 20)]
    sss_runs: usize,
    /// Sliding-sync connections opened to measure the memory each holds.
    #[arg(long, default_value_t = 1000)]
    sss_connections: usize,
    /// Members of the push scenario's room; all but the sender set a pusher.
    #[arg(long, default_value_t = 1001)]
    push_members: usize,
    /// Messages sent one after another into the push room, without and then with pushers.
    #[arg(long, default_value_t = 100)]
    push_messages: usize,
    /// Messages timed from the send to the last member's notification.
    #[arg(long, default_value_t = 5)]
    push_runs: usize,
    /// The registration file of the appservice conduit-bench plays in the `appservice`
    /// scenario (the server must have been started with it; its users namespace must hold
    /// `@bench_…`). Without it that scenario is not run by default.
    #[arg(long)]
    appservice: Option<PathBuf>,
    /// The server's name, for the appservice's user IDs.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Messages the appservice imports one after another (with `?ts=`).
    #[arg(long, default_value_t = 10_000)]
    import_messages: usize,
    /// Messages a second sent for the appservice delivery timing.
    #[arg(long, default_value_t = 1000)]
    as_rate: u32,
    /// For how many seconds.
    #[arg(long, default_value_t = 5.0)]
    as_seconds: f64,
    /// Members of the fan-out room, each long-polling `/sync` (besides the sender).
    #[arg(long, default_value_t = 2000)]
    fanout_members: usize,
    /// Messages sent to the fan-out room, each timed to every poller's response.
    #[arg(long, default_value_t = 5)]
    fanout_runs: usize,
    /// Members of the big room (its creator included); at least 42.
    #[arg(long, default_value_t = 10_000)]
    big_members: usize,
    /// Messages sent one after another into the big room once it is full.
    #[arg(long, default_value_t = 200)]
    big_messages: usize,
    /// The server's federation API, for the fed-* scenarios (default: --url).
    #[arg(long)]
    federation_url: Option<String>,
    /// PEM certificate (for the IP address 127.0.0.1, signed by a CA the server trusts for
    /// federation) that the servers conduit-bench plays in the fed-* scenarios serve.
    #[arg(long)]
    peer_cert: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long)]
    peer_key: Option<PathBuf>,
    /// Local members of the fed-inbound room, its creator included.
    #[arg(long, default_value_t = 1000)]
    fed_members: usize,
    /// Transactions fed-inbound sends, one after another.
    #[arg(long, default_value_t = 20)]
    fed_transactions: usize,
    /// PDUs in each of them (the spec allows at most 50).
    #[arg(long, default_value_t = 50)]
    fed_pdus: usize,
    /// Servers in the fed-fan-out room besides the server under test.
    #[arg(long, default_value_t = 20)]
    fed_servers: usize,
    /// Messages fed-fan-out sends, one at a time.
    #[arg(long, default_value_t = 50)]
    fed_rounds: usize,
    /// fed-join: the client API of the server whose rooms are joined.
    #[arg(long)]
    join_host_url: Option<String>,
    /// Its server name.
    #[arg(long)]
    join_host_name: Option<String>,
    /// The registration of the appservice conduit-bench plays on it, to make its members.
    #[arg(long)]
    join_host_appservice: Option<PathBuf>,
    /// fed-join: a second joining server, LABEL=URL of its client API (the first is --url).
    #[arg(long)]
    join_also: Option<String>,
    /// fed-join: rooms joined, each by every joining server.
    #[arg(long, default_value_t = 3)]
    fed_join_rounds: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit with failure when sequential sending is slower than this many messages per second
    /// (the CI smoke check).
    #[arg(long)]
    min_send_rate: Option<f64>,
    /// Allow a URL that is not loopback. A load generator should not be pointed at someone
    /// else's server by accident.
    #[arg(long)]
    allow_remote: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compare { first, second }) => compare(&first, &second),
        Some(Command::Median { out, runs }) => median(&out, &runs),
        None => run(cli.run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conduit-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read_run(path: &PathBuf) -> Result<Run, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn compare(first: &PathBuf, second: &PathBuf) -> Result<(), String> {
    print!("{}", report::compare(&read_run(first)?, &read_run(second)?));
    Ok(())
}

fn median(out: &PathBuf, runs: &[PathBuf]) -> Result<(), String> {
    let runs = runs.iter().map(read_run).collect::<Result<Vec<_>, _>>()?;
    let median = report::median(&runs)?;
    let text = serde_json::to_string_pretty(&median).map_err(|e| e.to_string())?;
    std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))
}

async fn run(args: RunArgs) -> Result<(), String> {
    let url = args.url.clone().ok_or("--url is required")?;
    let port = check_target(&url, args.allow_remote)?;
    let selected: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS
            .iter()
            .filter(|s| **s != "appservice" || args.appservice.is_some())
            // The big-room scenarios take minutes to set up (and far longer on Synapse).
            .filter(|s| !matches!(**s, "fan-out" | "big-room") && !s.starts_with("fed-"))
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        args.scenarios.clone()
    };
    if let Some(unknown) = selected.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        return Err(format!("unknown scenario {unknown:?}; known: {}", SCENARIOS.join(", ")));
    }
    if args.clients == 0 || args.members == 0 || args.page == 0 {
        return Err("--clients, --members and --page must be at least 1".to_owned());
    }
    let wants = |s: &str| selected.iter().any(|x| x == s);
    let pid = args.pid.or_else(|| port.and_then(process::pid_listening_on));
    let rss = || pid.and_then(process::rss_mib);
    if pid.is_none() {
        eprintln!("note: server process not found (pass --pid); memory is not reported");
    }
    let plan = Plan {
        run_id: format!("b{:08x}", rand_u32()),
        users: args.users,
        whoami: args.whoami,
        messages: args.messages,
        clients: args.clients,
        per_client: args.per_client,
        sync_rounds: args.sync_rounds,
        rooms: args.rooms,
        members: args.members,
        room_messages: args.room_messages,
        sync_runs: args.sync_runs,
        history: args.history,
        page: args.page,
        sss_rooms: args.sss_rooms,
        sss_runs: args.sss_runs,
        sss_connections: args.sss_connections,
        push_members: args.push_members,
        push_runs: args.push_runs,
        push_messages: args.push_messages,
        import_messages: args.import_messages,
        as_rate: args.as_rate.max(1),
        as_seconds: args.as_seconds,
        fanout_members: args.fanout_members,
        fanout_runs: args.fanout_runs,
        big_members: args.big_members,
        big_messages: args.big_messages,
        fed_members: args.fed_members.max(2),
        fed_transactions: args.fed_transactions.max(1),
        fed_pdus: args.fed_pdus.clamp(1, 50),
        fed_servers: args.fed_servers.max(1),
        fed_rounds: args.fed_rounds.max(1),
        fed_join_rounds: args.fed_join_rounds.max(1),
    };
    let registration = match &args.appservice {
        Some(path) => Some(appservice::Registration::read(path, &args.server_name)?),
        None => None,
    };
    let http = Http::new(&url)?;
    let mut run =
        Run { label: args.label.clone(), url: url.clone(), idle_rss_mib: rss(), outcomes: Vec::new() };
    if let Some(idle) = run.idle_rss_mib {
        println!("{}: idle RSS {idle:.1} MiB", args.label);
    }
    report::print_header();
    let record = |mut outcome: Outcome, run: &mut Run| {
        outcome.rss_mib = rss();
        report::print_outcome(&outcome);
        run.outcomes.push(outcome);
    };

    // Every scenario needs users; registering them is timed only when asked for.
    let needed = plan.users.max(plan.clients).max(plan.members.saturating_sub(1)).max(2);
    let started = Instant::now();
    let (users, mut latencies) = scenarios::register_users(&http, &plan, 0, needed, plan.clients).await?;
    if wants("register") {
        let note = format!("{} clients; UIA dummy, 2 requests; includes password hashing", plan.clients);
        record(Outcome::new("register", &mut latencies, started.elapsed(), note), &mut run);
    }
    if wants("login") {
        record(scenarios::login(&http, &plan, &users).await?, &mut run);
    }
    if wants("whoami") {
        record(scenarios::whoami(&plan, &users).await?, &mut run);
    }
    if wants("send") {
        record(scenarios::send_sequential(&plan, &users[0]).await?, &mut run);
    }
    if wants("send-concurrent") {
        record(scenarios::send_concurrent(&plan, &users, true).await?, &mut run);
    }
    if wants("send-rooms") {
        record(scenarios::send_concurrent(&plan, &users, false).await?, &mut run);
    }
    if wants("send-sync") {
        let poller = match &args.sync_url {
            Some(url) => users[1].through(&Http::new(url)?),
            None => users[1].clone(),
        };
        record(scenarios::send_to_sync(&plan, &users[0], &poller).await?, &mut run);
    }
    if wants("initial-sync") {
        let started = Instant::now();
        let owner = scenarios::populate_rooms(&http, &plan, &users).await?;
        eprintln!(
            "set-up: {} rooms × {} members × {} messages in {:.1} s",
            plan.rooms,
            plan.members,
            plan.room_messages,
            started.elapsed().as_secs_f64()
        );
        record(scenarios::initial_sync(&plan, &owner, false).await?, &mut run);
        record(scenarios::initial_sync(&plan, &owner, true).await?, &mut run);
        record(scenarios::empty_sync(&plan, &owner).await?, &mut run);
    }
    if wants("messages") {
        record(scenarios::back_paginate(&plan, &users).await?, &mut run);
    }

    if wants("sliding-sync") {
        let started = Instant::now();
        let (owner, rooms) = scenarios::populate_sliding(&http, &plan).await?;
        eprintln!(
            "set-up: {} rooms with a message each in {:.1} s",
            plan.sss_rooms,
            started.elapsed().as_secs_f64()
        );
        record(scenarios::sliding_first(&plan, &owner).await?, &mut run);
        record(scenarios::sliding_incremental(&plan, &owner, &rooms).await?, &mut run);
        let devices = scenarios::sliding_devices(&http, &plan).await?;
        let before = rss();
        let mut opened = scenarios::sliding_connections(&plan, &devices).await?;
        if let (Some(before), Some(after)) = (before, rss()) {
            let per = (after - before) * 1024.0 / plan.sss_connections.max(1) as f64;
            opened.note = if per > 0.0 {
                format!(
                    "{} connections on {} devices: {per:.1} KiB each (RSS delta)",
                    plan.sss_connections,
                    devices.len()
                )
            } else {
                // Memory freed by earlier scenarios was reused: the delta says nothing.
                format!(
                    "{} connections on {} devices: RSS did not grow; run --scenarios sliding-sync alone for the figure",
                    plan.sss_connections,
                    devices.len()
                )
            };
        }
        record(opened, &mut run);
    }

    if wants("push") {
        let started = Instant::now();
        let (sender, members, room) = scenarios::populate_push(&http, &plan).await?;
        eprintln!(
            "set-up: a room of {} members in {:.1} s",
            members.len() + 1,
            started.elapsed().as_secs_f64()
        );
        let (without, _) =
            scenarios::push_room_sends(&plan, &sender, &room, "send, big room, no pushers", "p").await?;
        record(without, &mut run);
        let (gateway, url) = gateway::Gateway::start().await?;
        scenarios::set_pushers(&plan, &members, &url).await?;
        let before = gateway.total();
        let (mut with, events) =
            scenarios::push_room_sends(&plan, &sender, &room, "send, big room, every member a pusher", "q")
                .await?;
        // The sends are timed alone; then how long the pushes they caused take to arrive.
        let drained = Instant::now();
        let expected = before + events.len() * members.len();
        let all = gateway.wait_total(expected, Duration::from_secs(600)).await;
        with.note = format!(
            "{} pushers; their {} notifications arrived {} {:.1} s after the last send",
            members.len(),
            events.len() * members.len(),
            if all { "all" } else { "NOT all" },
            drained.elapsed().as_secs_f64()
        );
        record(with, &mut run);
        record(scenarios::push_fan_out(&plan, &sender, &room, members.len(), &gateway).await?, &mut run);
    }

    // The appservice's transactions are answered whichever scenario made its users: the
    // server sends it every event of rooms they are in.
    let listener = match &registration {
        Some(reg) if wants("appservice") || wants("fan-out") || wants("big-room") || wants("fed-inbound") => {
            Some(appservice::Listener::start(reg).await?)
        }
        _ => None,
    };
    if wants("appservice") {
        let reg = registration.as_ref().ok_or("the appservice scenario needs --appservice FILE")?;
        let listener = listener.as_ref().ok_or("no appservice listener")?;
        let mut imported = appservice::import(&http, &plan, reg).await?;
        if let Some(send) = run.outcomes.iter().find(|o| o.scenario == "send, 1 client") {
            imported.note = format!(
                "{}; {:.0} % of sequential send",
                imported.note,
                100.0 * imported.per_second / send.per_second
            );
        }
        record(imported, &mut run);
        record(appservice::delivery(&http, &plan, reg, listener, &users).await?, &mut run);
    }

    if wants("fan-out") {
        record(bigroom::fan_out(&http, &plan, registration.as_ref(), pid).await?, &mut run);
    }
    if wants("big-room") {
        for outcome in bigroom::big_room(&http, &plan, registration.as_ref(), pid).await? {
            record(outcome, &mut run);
        }
    }

    if wants("fed-inbound") || wants("fed-fan-out") {
        let setup = federation::Setup {
            certificate: args
                .peer_cert
                .clone()
                .ok_or("the fed-* scenarios need --peer-cert and --peer-key")?,
            private_key: args
                .peer_key
                .clone()
                .ok_or("the fed-* scenarios need --peer-cert and --peer-key")?,
            server_url: args.federation_url.clone().unwrap_or_else(|| url.clone()),
        };
        if wants("fed-inbound") {
            let started = Instant::now();
            let mut members =
                bigroom::provision(&http, &plan, registration.as_ref(), bigroom::FED_USERS, plan.fed_members)
                    .await?;
            eprintln!("set-up: {} users in {:.1} s", members.len(), started.elapsed().as_secs_f64());
            let creator = members.remove(0);
            record(federation::inbound(&plan, &setup, &creator, &members).await?, &mut run);
        }
        if wants("fed-fan-out") {
            record(federation::fan_out(&plan, &setup, &users[0]).await?, &mut run);
        }
    }
    if wants("fed-join") {
        let needs = "fed-join needs --join-host-url, --join-host-name and --join-host-appservice";
        let host_name = args.join_host_name.clone().ok_or(needs)?;
        let registration =
            appservice::Registration::read(args.join_host_appservice.as_deref().ok_or(needs)?, &host_name)?;
        let mut joiners = vec![(args.label.clone(), http.clone())];
        if let Some(also) = &args.join_also {
            let (label, url) = also.split_once('=').ok_or("--join-also takes LABEL=URL")?;
            check_target(url, args.allow_remote)?;
            joiners.push((label.to_owned(), Http::new(url)?));
        }
        let host_url = args.join_host_url.clone().ok_or(needs)?;
        check_target(&host_url, args.allow_remote)?;
        let setup = federation::JoinSetup {
            host: Http::new(&host_url)?,
            host_name,
            host_appservice: registration,
            joiners,
        };
        for outcome in federation::join_remote(&plan, &setup).await? {
            record(outcome, &mut run);
        }
    }

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(floor) = args.min_send_rate {
        let send = run
            .outcomes
            .iter()
            .find(|o| o.scenario == "send, 1 client")
            .ok_or("--min-send-rate needs the send scenario")?;
        if send.per_second < floor {
            return Err(format!(
                "sequential send ran at {:.0} msg/s, below the floor of {floor:.0}",
                send.per_second
            ));
        }
        println!("sequential send {:.0} msg/s ≥ floor {floor:.0}", send.per_second);
    }
    Ok(())
}

/// The URL's port, after refusing targets that are not loopback unless allowed.
fn check_target(url: &str, allow_remote: bool) -> Result<Option<u16>, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad --url {url:?}: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("--url {url:?} has no host"))?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        return Err(format!("refusing {host}: not loopback (pass --allow-remote to load another machine)"));
    }
    Ok(parsed.port_or_known_default())
}

fn rand_u32() -> u32 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn a_repeated_option_takes_its_last_value() {
        // scripts/bench-vs-synapse puts its defaults first and the caller's options after.
        let cli = Cli::try_parse_from([
            "conduit-bench",
            "--history",
            "20000",
            "--scenarios",
            "send,messages",
            "--history",
            "5000",
            "--scenarios",
            "fan-out",
        ])
        .unwrap();
        assert_eq!(cli.run.history, 5000);
        assert_eq!(cli.run.scenarios, ["fan-out"]);
    }
}
