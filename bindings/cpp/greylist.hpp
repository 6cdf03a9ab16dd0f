// greylist.hpp: a header-only C++17 wrapper over the greylist C ABI.
//
// RAII, move-only handles (greylist::Config, greylist::Engine); every
// failure is a greylist::Error carrying the status and the library's
// message. An Engine may be used from many threads at once.
#ifndef GREYLIST_HPP
#define GREYLIST_HPP

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "greylist.h"

namespace greylist {

/// A failed call: the status code and the library's message.
class Error : public std::runtime_error {
 public:
  Error(greylist_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  greylist_status status() const noexcept { return status_; }
  const char *status_name() const noexcept { return greylist_status_str(status_); }

 private:
  greylist_status status_;
};

namespace detail {

inline std::string last_error() {
  std::string message(greylist_last_error(nullptr, 0), '\0');
  if (!message.empty()) {
    greylist_last_error(message.data(), message.size() + 1);
  }
  return message;
}

inline void check(greylist_status status) {
  if (status != GREYLIST_STATUS_OK) {
    throw Error(status, last_error());
  }
}

// C strings end at the first NUL; refuse a std::string that holds one
// rather than silently checking a different address.
inline const char *c_str(const std::string &s, const char *argument) {
  if (s.find('\0') != std::string::npos) {
    throw Error(GREYLIST_STATUS_INVALID_ARGUMENT, std::string(argument) + ": contains a NUL byte");
  }
  return s.c_str();
}

inline void check_abi() {
  if (greylist_abi_version() != GREYLIST_ABI_VERSION) {
    throw Error(GREYLIST_STATUS_INVALID_ARGUMENT,
                "libgreylist ABI " + std::to_string(greylist_abi_version()) +
                    " does not match greylist.h ABI " + std::to_string(GREYLIST_ABI_VERSION));
  }
}

}  // namespace detail

enum class Action : uint32_t {
  Pass = GREYLIST_ACTION_PASS,
  Defer = GREYLIST_ACTION_DEFER,
  Block = GREYLIST_ACTION_BLOCK,
};

enum class Reason : uint32_t {
  New = GREYLIST_REASON_NEW,
  EarlyRetry = GREYLIST_REASON_EARLY_RETRY,
  Retried = GREYLIST_REASON_RETRIED,
  Passed = GREYLIST_REASON_PASSED,
  Whitelisted = GREYLIST_REASON_WHITELISTED,
  AutoWhitelisted = GREYLIST_REASON_AUTO_WHITELISTED,
  Blocked = GREYLIST_REASON_BLOCKED,
  Trapped = GREYLIST_REASON_TRAPPED,
  StoreUnavailable = GREYLIST_REASON_STORE_UNAVAILABLE,
};

/// What the client part of a request's key was (`Verdict::key()`).
enum class KeyKind : uint32_t {
  /// The client's network (its address masked to the configured prefix).
  Network = GREYLIST_KEY_NETWORK,
  /// The registrable domain of the client's verified host name
  /// (`Config::key_by_host_name()`).
  HostDomain = GREYLIST_KEY_HOST_DOMAIN,
  /// A sender domain the MTA verified (`Config::key_by_verified_domain()`).
  VerifiedDomain = GREYLIST_KEY_VERIFIED_DOMAIN,
};

enum class List : uint32_t {
  Clients = GREYLIST_LIST_CLIENTS,
  Senders = GREYLIST_LIST_SENDERS,
  Recipients = GREYLIST_LIST_RECIPIENTS,
  TrapRecipients = GREYLIST_LIST_TRAP_RECIPIENTS,
};

/// What the MTA knows of the client, beyond the triplet (all optional).
struct ClientInfo {
  std::string client_name;      // verified host name
  std::string helo;             // never decides: unverified
  std::string verified_domain;  // SPF/DKIM-verified sender domain
};

/// A row of the lost-mail report.
struct LostMail {
  std::string network;
  uint64_t count;
  int64_t last_seen;
};

/// The answer for one triplet.
struct Verdict {
  greylist_verdict raw;
  /// What keyed the check (`greylist_request.key_used`); a check of the
  /// bare triplet is keyed by the client network.
  greylist_key_kind key_used = GREYLIST_KEY_NETWORK;
  Action action() const noexcept { return static_cast<Action>(raw.action); }
  Reason reason() const noexcept { return static_cast<Reason>(raw.reason); }
  uint32_t retry_after() const noexcept { return raw.retry_after; }
  uint32_t delayed() const noexcept { return raw.delayed; }
  KeyKind key() const noexcept { return static_cast<KeyKind>(key_used); }
};

/// Engine settings; every setter checks its value and throws on a bad one.
class Config {
 public:
  Config() : config_(greylist_config_new()) {
    if (config_ == nullptr) {
      throw Error(GREYLIST_STATUS_PANIC, "greylist_config_new failed");
    }
  }
  ~Config() { greylist_config_free(config_); }
  Config(Config &&other) noexcept : config_(std::exchange(other.config_, nullptr)) {}
  Config &operator=(Config &&other) noexcept {
    std::swap(config_, other.config_);
    return *this;
  }
  Config(const Config &) = delete;
  Config &operator=(const Config &) = delete;

  Config &delay(uint32_t seconds) { return set(greylist_config_set_delay(config_, seconds)); }
  Config &retry_window(uint32_t seconds) {
    return set(greylist_config_set_retry_window(config_, seconds));
  }
  Config &pass_ttl(uint32_t seconds) { return set(greylist_config_set_pass_ttl(config_, seconds)); }
  Config &awl_threshold(uint32_t passes) {
    return set(greylist_config_set_awl_threshold(config_, passes));
  }
  Config &awl_ttl(uint32_t seconds) { return set(greylist_config_set_awl_ttl(config_, seconds)); }
  Config &blast(uint32_t rounds, uint32_t block_seconds) {
    return set(greylist_config_set_blast(config_, rounds, block_seconds));
  }
  Config &blast_copies(uint32_t copies) {
    return set(greylist_config_set_blast_copies(config_, copies));
  }
  Config &lost_after(uint32_t seconds) {
    return set(greylist_config_set_lost_after(config_, seconds));
  }
  Config &max_entries(uint64_t entries) {
    return set(greylist_config_set_max_entries(config_, entries));
  }
  Config &max_clients(uint64_t clients) {
    return set(greylist_config_set_max_clients(config_, clients));
  }
  Config &prefixes(uint8_t ipv4, uint8_t ipv6) {
    return set(greylist_config_set_prefixes(config_, ipv4, ipv6));
  }
  Config &extension_delimiters(const std::string &delimiters) {
    return set(greylist_config_set_extension_delimiters(
        config_, detail::c_str(delimiters, "delimiters")));
  }
  /// Key a request with a verified sender domain (`ClientInfo::verified_domain`)
  /// by that domain instead of the client network (default off).
  Config &key_by_verified_domain(bool enable) {
    return set(greylist_config_set_key_by_verified_domain(config_, enable));
  }
  /// Key a request with a verified, non-generic host name
  /// (`ClientInfo::client_name`) by the name's registrable domain instead of
  /// the client network: `mail-sor-f41.google.com` keys as `google.com`
  /// (default on).
  Config &key_by_host_name(bool enable) {
    return set(greylist_config_set_key_by_host_name(config_, enable));
  }
  /// Load `path` at start if it exists, save every `interval_seconds` (0:
  /// only) and when the engine is destroyed.
  Config &snapshot(const std::string &path, uint32_t interval_seconds) {
    return set(greylist_config_set_snapshot(config_, detail::c_str(path, "path"), interval_seconds));
  }
  /// Share triplets with other MX hosts through Redis (`redis://...`,
  /// `rediss://...`); needs `secret_file()`.
  Config &redis(const std::string &url) {
    return set(greylist_config_set_redis(config_, detail::c_str(url, "url")));
  }
  /// The key secret every MX host shares: a file of 32 hex digits.
  Config &secret_file(const std::string &path) {
    return set(greylist_config_set_secret_file(config_, detail::c_str(path, "path")));
  }
  /// For `rediss://`: trust the CA (PEM) in `path` instead of the system's roots.
  Config &redis_ca_file(const std::string &path) {
    return set(greylist_config_set_redis_ca_file(config_, detail::c_str(path, "path")));
  }
  Config &redis_prefix(const std::string &prefix) {
    return set(greylist_config_set_redis_prefix(config_, detail::c_str(prefix, "prefix")));
  }
  Config &redis_timeout_ms(uint32_t milliseconds) {
    return set(greylist_config_set_redis_timeout_ms(config_, milliseconds));
  }
  /// When Redis fails: pass what the local table would defer (false, the
  /// default) or defer it (true).
  Config &redis_fail_defer(bool defer) {
    return set(greylist_config_set_redis_fail_defer(config_, defer));
  }
  Config &pass_cache(uint32_t entries, uint32_t seconds) {
    return set(greylist_config_set_pass_cache(config_, entries, seconds));
  }
  Config &reply(uint16_t code, const std::string &enhanced, const std::string &text) {
    return set(greylist_config_set_reply(config_, code, detail::c_str(enhanced, "enhanced"),
                                         detail::c_str(text, "text")));
  }

  const greylist_config *get() const noexcept { return config_; }

 private:
  Config &set(greylist_status status) {
    detail::check(status);
    return *this;
  }
  greylist_config *config_;
};

/// A greylisting engine. Thread-safe; move-only.
class Engine {
 public:
  Engine() : Engine(static_cast<const greylist_config *>(nullptr)) {}
  explicit Engine(const Config &config) : Engine(config.get()) {}
  ~Engine() { greylist_engine_free(engine_); }
  Engine(Engine &&other) noexcept : engine_(std::exchange(other.engine_, nullptr)) {}
  Engine &operator=(Engine &&other) noexcept {
    std::swap(engine_, other.engine_);
    return *this;
  }
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;

  /// Decides one triplet; `now` in Unix seconds, GREYLIST_NOW for the clock.
  Verdict check(const std::string &client_ip, const std::string &sender,
                const std::string &recipient, int64_t now = GREYLIST_NOW) {
    Verdict v{};
    detail::check(greylist_engine_check(engine_, detail::c_str(client_ip, "client_ip"),
                                        detail::c_str(sender, "sender"),
                                        detail::c_str(recipient, "recipient"), now, &v.raw));
    return v;
  }

  /// Decides one request with what the MTA knows of the client; the
  /// verdict's `key()` says what keyed it (a host or verified domain, or
  /// the network).
  Verdict check(const std::string &client_ip, const std::string &sender,
                const std::string &recipient, const ClientInfo &info,
                int64_t now = GREYLIST_NOW) {
    auto opt = [](const std::string &s, const char *name) {
      return s.empty() ? nullptr : detail::c_str(s, name);
    };
    greylist_request req{};
    req.struct_size = sizeof req;
    req.client_ip = detail::c_str(client_ip, "client_ip");
    req.sender = detail::c_str(sender, "sender");
    req.recipient = detail::c_str(recipient, "recipient");
    req.client_name = opt(info.client_name, "client_name");
    req.helo = opt(info.helo, "helo");
    req.verified_domain = opt(info.verified_domain, "verified_domain");
    req.now = now;
    Verdict v{};
    req.key_used = &v.key_used;
    detail::check(greylist_engine_check_request(engine_, &req, &v.raw));
    return v;
  }

  /// Replaces (or extends) one list; a bad entry throws and changes nothing.
  void set_list(List kind, const std::vector<std::string> &entries, bool replace = true) {
    std::vector<const char *> pointers;
    for (const auto &e : entries) pointers.push_back(detail::c_str(e, "entries"));
    detail::check(greylist_engine_set_list(engine_, static_cast<uint32_t>(kind), pointers.data(),
                                           pointers.size(), replace));
  }

  /// Replaces one list with a file's entries; returns how many.
  size_t load_list(List kind, const std::string &path) {
    size_t loaded = 0;
    detail::check(greylist_engine_load_list(engine_, static_cast<uint32_t>(kind),
                                            detail::c_str(path, "path"), &loaded));
    return loaded;
  }

  /// Client networks whose mail was most likely lost, worst first.
  std::vector<LostMail> lost_mail_report(size_t limit = 10) const {
    std::vector<greylist_lost_mail> rows(limit);
    size_t count = 0;
    detail::check(greylist_engine_lost_mail_report(engine_, rows.data(), limit, &count));
    std::vector<LostMail> out;
    for (size_t i = 0; i < count; i++) out.push_back({rows[i].network, rows[i].count, rows[i].last_seen});
    return out;
  }

  /// Writes a crash-safe snapshot.
  void save(const std::string &path) const {
    detail::check(greylist_engine_save(engine_, detail::c_str(path, "path")));
  }

  /// An engine loaded from a snapshot.
  static Engine load(const std::string &path, const Config &config) {
    detail::check_abi();
    greylist_engine *engine = nullptr;
    detail::check(greylist_engine_load(config.get(), detail::c_str(path, "path"), &engine));
    return Engine(engine);
  }

  /// Removes expired entries; returns how many triplet entries went.
  uint64_t sweep(int64_t now = GREYLIST_NOW) {
    uint64_t removed = 0;
    detail::check(greylist_engine_sweep(engine_, now, &removed));
    return removed;
  }

  uint64_t size() const noexcept { return greylist_engine_len(engine_); }

  greylist_stats stats() const {
    greylist_stats s{};
    s.struct_size = sizeof s;
    detail::check(greylist_engine_stats(engine_, &s));
    return s;
  }

  /// The suggested SMTP reply for a defer or block; empty for a pass.
  std::string reply(const Verdict &verdict) const {
    char buf[640];
    detail::check(greylist_verdict_reply(engine_, &verdict.raw, buf, sizeof buf));
    return std::string(buf);
  }

 private:
  explicit Engine(greylist_engine *owned) noexcept : engine_(owned) {}
  explicit Engine(const greylist_config *config) : engine_(nullptr) {
    detail::check_abi();
    detail::check(greylist_engine_new(config, &engine_));
  }
  greylist_engine *engine_;
};

}  // namespace greylist

#endif  // GREYLIST_HPP
