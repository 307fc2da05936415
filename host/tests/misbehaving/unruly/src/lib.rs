//! A capacity type that behaves until told not to: a counter with a fixed
//! capacity whose commands make it loop forever, eat memory, panic while
//! deciding, or panic while applying its own event.

use allot_sdk::prelude::*;

/// The unruly capacity type.
pub struct Unruly;

allot_sdk::export_capacity_type!(Unruly);

/// `{"capacity": 10, "panic_on_create": false}`
#[derive(Deserialize)]
pub struct Config {
    capacity: u64,
    #[serde(default)]
    panic_on_create: bool,
}

/// Ways to misbehave.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misbehave {
    /// Loop forever while deciding.
    Spin {},
    /// Allocate until memory runs out while deciding.
    Hog {},
    /// Panic while deciding.
    Explode {},
    /// Decide an event that panics when applied.
    ExplodeOnApply {},
    /// Look around the sandbox and report what it can see.
    Snoop {},
}

/// Events.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// One unit taken.
    Taken {
        /// Reservation id.
        id: String,
    },
    /// One unit given back.
    Returned {
        /// Reservation id.
        id: String,
    },
    /// Panics when applied.
    Boom,
    /// What the plugin could see of the machine.
    Snooped {
        /// Entries of `/`, or why they could not be listed.
        root: String,
        /// Environment variables visible.
        env_vars: usize,
        /// Seconds since the Unix epoch by the system clock.
        clock_secs: u64,
        /// What connecting to a loopback port gave: `connected` or the error kind.
        network: String,
    },
}

/// Capacity and the ids holding it.
#[derive(Serialize, Deserialize)]
pub struct State {
    capacity: u64,
    taken: Vec<String>,
}

impl CapacityType for Unruly {
    const CAPACITY_TYPE: &'static str = "unruly";
    type Config = Config;
    type Request = serde::de::IgnoredAny;
    type Command = Misbehave;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        assert!(!config.panic_on_create, "told to panic on create");
        Ok(State {
            capacity: config.capacity,
            taken: Vec::new(),
        })
    }

    fn reserve(state: &State, _: &Context, id: &str, _: serde::de::IgnoredAny) -> Decision<Event> {
        if state.taken.len() as u64 >= state.capacity {
            return Err(Failure::rejected("full", "no capacity left"));
        }
        Ok(vec![Event::Taken { id: id.into() }])
    }

    fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
        if !state.taken.iter().any(|t| t == id) {
            return Err(Failure::rejected("unknown_reservation", id.to_string()));
        }
        Ok(vec![Event::Returned { id: id.into() }])
    }

    fn command(_: &State, _: &Context, command: Misbehave) -> Decision<Event> {
        match command {
            Misbehave::Spin {} => loop {
                std::hint::black_box(());
            },
            // Reserves memory without writing it, so the cap is what stops
            // it, not the call deadline on a busy machine.
            Misbehave::Hog {} => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(1 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            Misbehave::Explode {} => panic!("boom: told to explode"),
            Misbehave::ExplodeOnApply {} => Ok(vec![Event::Boom]),
            Misbehave::Snoop {} => Ok(vec![Event::Snooped {
                root: match std::fs::read_dir("/") {
                    Ok(entries) => format!("{} entries", entries.count()),
                    Err(e) => format!("refused: {e}"),
                },
                env_vars: std::env::vars().count(),
                clock_secs: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                network: match std::net::TcpStream::connect("127.0.0.1:5432") {
                    Ok(_) => "connected".into(),
                    Err(e) => format!("{:?}", e.kind()),
                },
            }]),
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            Event::Taken { id } => state.taken.push(id),
            Event::Returned { id } => state.taken.retain(|t| *t != id),
            Event::Boom => panic!("boom: exploded while applying"),
            Event::Snooped { .. } => {}
        }
    }

    fn view(state: &State) -> View {
        View::new(vec![
            Cell::new("units", "units", state.capacity).used(state.taken.len() as u64),
        ])
    }
}
