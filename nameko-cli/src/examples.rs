//! The `Examples:` section of each verb's `--help`, written for the binary's own name.

/// The examples of `verb`, for a binary called `bin`; `None` for verbs without any.
pub(crate) fn examples(verb: &str, bin: &str) -> Option<String> {
    let text = match verb {
        "run" => {
            "Examples:\n  \
             {bin} run --transport memory         # every service, on an in-process broker\n  \
             {bin} run greeting --broker amqp://guest:guest@localhost:5672/\n  \
             {bin} run --config config.yaml --define max_workers=4 --stop-timeout 10\n\
             The first SIGTERM or Ctrl-C stops gracefully; a second one kills."
        }
        "list" => "Examples:\n  {bin} list",
        "show-config" => {
            "Examples:\n  \
             {bin} show-config --config config.yaml\n  \
             NAMEKO_MAX_WORKERS=8 {bin} show-config --define GREETING.salutation=Hi\n  \
             {bin} show-config --config config.yaml --broker amqp://user:secret@rabbit/\n\
             Precedence: the file < NAMEKO_<KEY> (`__` nests) < --define < --broker; passwords are masked."
        }
        "request" => {
            "Examples:\n  \
             {bin} request greeting.greet '{\"name\": \"Ada\"}'   # keyword arguments\n  \
             {bin} request greeting.greet '[\"Ada\"]'           # positional arguments\n  \
             {bin} request greeting.greet '{\"name\": \"Ada\"}' --context user_id=u-42 --timeout 5\n  \
             echo '{\"name\": \"Ada\"}' | {bin} request greeting.greet - --raw\n\
             The result is printed as JSON on stdout; a remote error as `exc_type: value` on\n\
             stderr (exit 1); an unknown service or a timeout says so (exit 1)."
        }
        "emit" => {
            "Examples:\n  \
             {bin} emit greeting greeted '{\"name\": \"Ada\"}'\n  \
             {bin} emit billing paid '{\"invoice\": 7}' --context user_id=u-42 --broker amqp://rabbit/\n\
             The event goes to the exchange `SERVICE.events` with EVENT as routing key, as if\n\
             SERVICE dispatched it; an event nobody listens to is dropped by RabbitMQ."
        }
        "subscribe" => {
            "Examples:\n  \
             {bin} subscribe greeting greeted             # until Ctrl-C\n  \
             {bin} subscribe greeting '*' --count 10 | jq .payload\n\
             Each event is one JSON line: {\"service\", \"event\", \"headers\", \"payload\"} (\"body\",\n\
             a string, instead of \"payload\" when the body is not JSON). The queue is exclusive\n\
             and auto-deleted: nothing is left on the broker."
        }
        "shell" => {
            "Examples:\n  \
             {bin} shell --broker amqp://guest:guest@rabbit/\n  \
             printf 'request greeting.greet {\"name\": \"Ada\"}\\nemit greeting greeted {}\\n' | {bin} shell\n\
             Commands are the verbs (`request`, `emit`, ...), `help` and `exit`. When standard\n\
             input is not a terminal, lines are read as a script: it goes on after a failing\n\
             command and exits with 1 if any failed."
        }
        "completions" => {
            "Examples:\n  \
             {bin} completions bash > ~/.local/share/bash-completion/completions/{bin}\n  \
             {bin} completions zsh > ~/.zfunc/_{bin}\n  \
             {bin} completions fish > ~/.config/fish/completions/{bin}.fish"
        }
        "discover" => {
            "Examples:\n  \
             {bin} discover\n  \
             {bin} discover greeting listen --broker amqp://guest:guest@rabbit:5672/prod\n  \
             {bin} discover --define MANAGEMENT_URI=http://admin:secret@rabbit:15672/\n\
             A service is listed when RabbitMQ has its RPC queue `rpc-<service>`, or, for a service\n\
             without RPC entrypoints, an event handler queue `evt-<source>-<event>--<service>.<method>`.\n\
             Its instances are the consumers of `rpc-<service>` (else the most consumers of any of its\n\
             event handler queues), counted live with a passive declare. The queues are listed by the\n\
             RabbitMQ management API\n\
             (`MANAGEMENT_URI`, default `http://<AMQP user>:<password>@<AMQP host>:15672/`, the vhost\n\
             of `AMQP_URI`). Without the API, discover says so and checks each SERVICE given with a\n\
             passive declare of `rpc-<service>`.\n\
             \n\
             Exit codes: 0 when every SERVICE given runs at least one instance; 1 when one is absent or\n\
             has none, or nothing can be listed; 2 for usage errors."
        }
        "inspect" => {
            "Examples:\n  \
             {bin} inspect greeting\n  \
             {bin} inspect greeting --json\n  \
             {bin} inspect greeting --broker amqp://guest:guest@rabbit:5672/prod --timeout 5\n\
             Every nameko-rs service with an RPC entrypoint answers the built-in RPC\n\
             `<service>._nameko_inspect` (no arguments) without running a worker: its entrypoints\n\
             with kind (rpc, event_handler, http with its route, timer with its schedule, ws_rpc),\n\
             parameters (names and Rust types as written), return type and doc lines. A Python Nameko\n\
             service answers MethodNotFound: inspect then says it is not introspectable and prints\n\
             what is knowable (its RPC queue's consumers).\n\
             \n\
             Exit codes: 0 when the service answered (a Python one too); 1 when no service of that\n\
             name consumes `rpc-<service>` or it does not answer in time; 2 for usage errors."
        }
        "tail" => {
            "Examples:\n  \
             {bin} tail greeting\n  \
             {bin} tail greeting listen --broker amqp://guest:guest@rabbit:5672/prod\n\
             A service streams its log lines when its config opts it in: `LOG_STREAM: true` (every\n\
             service of the process) or `LOG_STREAM: [greeting, listen]`. Its process then publishes\n\
             each line it logs (after RUST_LOG's filter) to the topic exchange `LOG_EXCHANGE` (default\n\
             `nameko.logs`) with routing key `<service>.<level>`. tail binds an exclusive, auto-delete\n\
             queue to `<service>.*` for each SERVICE and prints every line, with host, process id and\n\
             instance, until SIGTERM or Ctrl-C; its queue goes with it. Lines logged while nobody\n\
             tails are not kept.\n\
             \n\
             Exit codes: 0 after SIGTERM or Ctrl-C; 1 when RabbitMQ cannot be reached; 2 for usage\n\
             errors."
        }
        _ => return None,
    };
    Some(text.replace("{bin}", bin))
}
