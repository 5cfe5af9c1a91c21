//! A synchronous model pool as its users write one (`registry-pool`): a registry that loads
//! models on first use and unloads the least recently used, two worker threads per model, and
//! workers that crash now and then — a panic leaves `Worker::run`, the thread catches it and
//! starts a new worker. The manifest probes `Worker::run` alone, at entry and at return: a
//! worker whose `run` a panic ends crashed; one whose `run` returns was unloaded.

mod profiles;

use pool_obs_tests::processes::{Agent, Pool, StartFile, agent_check, args, free_address, manifest};

#[test]
fn a_worker_a_panic_takes_out_of_its_run_counts_as_a_crash_and_an_unload_as_an_eviction() {
    let start = StartFile::new("registry-pool");
    let mut pool =
        Pool::start_named("registry-pool", &[args(&["--requests", "20000"]), start.arg().to_vec()].concat());
    let agent = Agent::attach(pool.pid(), &manifest("registry-pool.toml"), free_address(), &[]);
    start.start();
    let (summary, health) = agent.health_while(|| pool.summary());
    pool.wait_for_exit();
    let crashes: u64 = summary.models.values().map(|model| model.crashes).sum();
    let lives: u64 = summary.models.values().map(|model| model.evictions + model.crashes).sum();
    let metrics = agent.metrics_once(|metrics| {
        metrics.sum("pool_worker_evictions_total") + metrics.sum("pool_worker_crashes_total") >= lives as f64
    });

    assert!(crashes > 5, "the load crashes workers: {summary:?}");
    for (model, truth) in &summary.models {
        assert!(truth.evictions > 0, "{model}: the registry unloads it: {truth:?}");
        for (name, count) in [
            ("pool_worker_spawns_total", truth.spawns),
            ("pool_worker_evictions_total", truth.evictions),
            ("pool_worker_crashes_total", truth.crashes),
        ] {
            assert_eq!(metrics.of_model(name, model, &[]) as u64, count, "{model} {name}");
        }
    }
    // A crash is a panic the agent saw unwind through `run` (`unwound`, counted as the kernel
    // reports it), and nothing else is amiss.
    let anomalies = metrics.nonzero("pool_obs_anomalies_total", "kind");
    assert!(anomalies.keys().all(|kind| kind == "unwound"), "{anomalies:?}");
    // Unloads and crashes are the pool's normal running: `/health` stays 200.
    assert!(health.len() >= 3, "/health was asked while the pool ran: {health:?}");
    assert!(health.iter().all(|(status, _)| *status == 200), "/health 200 throughout: {health:?}");
}

#[test]
fn the_cpu_of_a_requests_rayon_batch_and_its_profile_samples_count_for_its_model() {
    // Three of the five models batch each request on rayon's global pool: the registry's worker
    // injects a `par_iter`, rayon's workers split it and steal the halves of each other's joins.
    let start = StartFile::new("registry-pool-rayon");
    let mut pool = Pool::start_named(
        "registry-pool",
        &[args(&["--requests", "4000", "--crash-rate", "0"]), start.arg().to_vec()].concat(),
    );
    let agent = Agent::attach(pool.pid(), &manifest("registry-pool.toml"), free_address(), &[]);
    start.start();
    let profile = profiles::take(pool.pid(), &agent, 2);
    let summary = pool.summary();
    pool.wait_for_exit();
    let metrics = agent.metrics_once(|metrics| metrics.sum("pool_model_handoff_cpu_seconds_total") > 0.0);

    let batched = ["llama-7b", "mistral-7b", "t5-large"];
    for (model, truth) in &summary.models {
        let handed_off = metrics.of_model("pool_model_handoff_cpu_seconds_total", model, &[("via", "rayon")]);
        eprintln!(
            "{model}: CPU handed to rayon {handed_off:.3} s, its batch items' {:.3} s",
            truth.cpu_seconds
        );
        if batched.contains(&model.as_str()) {
            assert!(truth.cpu_seconds > 0.3, "{model} batches on rayon: {truth:?}");
            // The run's window holds rayon's own work for the batch (splitting, joining) and the
            // probes' traps, besides the items the pool measures.
            assert!(
                (handed_off - truth.cpu_seconds).abs() <= 0.05 * truth.cpu_seconds,
                "{model}: CPU handed to rayon {handed_off} s, the pool's measure {} s",
                truth.cpu_seconds
            );
        } else {
            assert_eq!(handed_off, 0.0, "{model} hands nothing to rayon");
        }
    }
    // The samples in a model's forward pass carry the model, on rayon's threads too.
    let by_model = profiles::samples_by_model(&profile, &["registry_pool::forward"]);
    eprintln!("{by_model:?}");
    let forward = |model: &str| by_model.get(model).and_then(|(_, hits)| hits.values().next().copied());
    for model in batched {
        assert!(forward(model).unwrap_or(0) > 10, "{model}'s forward is sampled: {by_model:?}");
    }
    let labelled: i64 = summary.models.keys().filter_map(|model| forward(model)).sum();
    let unlabelled: i64 = by_model
        .iter()
        .filter(|(model, _)| !summary.models.contains_key(*model))
        .filter_map(|(_, (_, hits))| hits.values().next().copied())
        .sum();
    assert!(
        unlabelled as f64 <= 0.05 * (labelled + unlabelled) as f64,
        "{unlabelled} samples in forward carry no model, of {}",
        labelled + unlabelled
    );
}

/// `check` on registry-pool with a one-probe manifest naming `function`: its exit code and what
/// it printed.
fn check_function(function: &str) -> (Option<i32>, String) {
    let text =
        format!("[[probe]]\nevent = \"worker_spawned\"\nfunction = \"{function}\"\nmodel = \"model\"\n");
    let path =
        std::env::temp_dir().join(format!("pool-obs-generic-{}-{}.toml", std::process::id(), text.len()));
    std::fs::write(&path, text).expect("write the manifest");
    let checked = agent_check("registry-pool", &path);
    let _ = std::fs::remove_file(&path);
    checked
}

#[test]
fn one_instance_of_a_generic_function_is_named_by_its_generic_arguments_not_a_hash() {
    // `lifecycle(truth, model, change: impl FnOnce(&mut Lifecycle))`: one instance a closure.
    let (code, text) = check_function("registry_pool::lifecycle");
    assert_eq!(code, Some(19), "{text}");
    let instance =
        "registry_pool::lifecycle<registry_pool::{impl#1}::load::{closure#0}::{closure#0}::{closure_env#2}>";
    assert!(
        text.contains("name one by its generic arguments") && text.contains(&format!("`{instance}`")),
        "{text}"
    );
    let (code, text) = check_function(instance);
    assert_eq!(code, Some(0), "{text}");
    // A mangled name from another build: its hash is no function's, but its name is.
    let (code, text) = check_function("_ZN13registry_pool9lifecycle17h0123456789abcdefE");
    assert_eq!(code, Some(19), "{text}");
    assert!(text.contains("was the binary rebuilt?") && text.contains(&format!("`{instance}`")), "{text}");
}
