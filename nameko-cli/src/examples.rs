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
        _ => return None,
    };
    Some(text.replace("{bin}", bin))
}
