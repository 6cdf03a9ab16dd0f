// Tests of the C++ wrapper (bindings/cpp/greylist.hpp). Exits non-zero when
// any test fails.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "greylist.hpp"

static int failures = 0;
static int runs = 0;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      return false;                                                                 \
    }                                                                               \
  } while (0)

static void run_test(const std::function<bool()> &test, const char *name) {
  bool ok = false;
  try {
    ok = test();
  } catch (const std::exception &e) {
    std::fprintf(stderr, "  unexpected exception: %s\n", e.what());
  }
  std::printf("test %s ... %s\n", name, ok ? "ok" : "FAILED");
  failures += ok ? 0 : 1;
  runs++;
}

constexpr int64_t T0 = 1700000000;

static_assert(!std::is_copy_constructible_v<greylist::Engine>, "move-only");
static_assert(std::is_nothrow_move_constructible_v<greylist::Engine>, "movable");
static_assert(!std::is_copy_assignable_v<greylist::Config>, "move-only");

static bool test_cycle() {
  greylist::Engine engine;
  auto v = engine.check("192.0.2.1", "alice@example.org", "bob@example.net", T0);
  CHECK(v.action() == greylist::Action::Defer && v.reason() == greylist::Reason::New);
  CHECK(engine.reply(v) == "450 4.2.0 Greylisted, please try again in 300 seconds");
  v = engine.check("192.0.2.1", "alice@example.org", "bob@example.net", T0 + 120);
  CHECK(v.reason() == greylist::Reason::EarlyRetry && v.retry_after() == 180);
  v = engine.check("192.0.2.9", "Alice+x@example.org", "bob@example.net", T0 + 300);
  CHECK(v.action() == greylist::Action::Pass && v.reason() == greylist::Reason::Retried);
  CHECK(v.delayed() == 300 && engine.reply(v).empty());
  CHECK(engine.size() == 1 && engine.stats().checks == 3);
  CHECK(engine.sweep(4000000000LL) == 1 && engine.size() == 0);
  return true;
}

/* Issue 16: copies of one message block their network; lost_after is a
   setting like the others. */
static bool test_blast_copies_and_lost_after() {
  greylist::Config config;
  config.blast_copies(1).lost_after(60);
  greylist::Engine engine(config);
  for (int i = 0; i < 2; i++) {
    CHECK(engine.check("203.0.113.9", "s@spam.example", "v@y.net", T0).action() ==
          greylist::Action::Defer);
  }
  auto v = engine.check("203.0.113.9", "s@spam.example", "v@y.net", T0);
  CHECK(v.action() == greylist::Action::Block && v.reason() == greylist::Reason::Blocked);
  try {
    greylist::Config bad;
    bad.lost_after(0);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.what()).find("lost_after") != std::string::npos);
  }
  return true;
}

static bool test_config_and_errors() {
  greylist::Config config;
  config.delay(60).retry_window(3600).awl_threshold(0).reply(451, "4.7.1", "later: %s");
  greylist::Engine engine(config);
  auto v = engine.check("2001:db8::1", "", "bob@example.net", T0);
  CHECK(engine.reply(v) == "451 4.7.1 later: 60");

  try {
    config.prefixes(40, 64);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(e.status() == GREYLIST_STATUS_INVALID_ARGUMENT);
    CHECK(std::string(e.what()).find("ipv4_prefix") != std::string::npos);
  }
  try {
    engine.check("not-an-ip", "a@x.org", "b@y.net", T0);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.status_name()) == "GREYLIST_STATUS_INVALID_ARGUMENT");
    CHECK(std::string(e.what()).rfind("client_ip: ", 0) == 0);
  }
  try {
    engine.check("192.0.2.1", std::string("a\0b@x.org", 9), "b@y.net", T0);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.what()) == "sender: contains a NUL byte");
  }
  try {
    greylist::Config none;
    none.max_clients(0);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.what()).find("max_clients") != std::string::npos);
  }
  greylist::Config bad;
  bad.delay(7200).retry_window(3600);
  try {
    greylist::Engine never(bad);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.what()).find("delay") != std::string::npos);
  }
  return true;
}

static bool test_move_and_threads() {
  greylist::Engine first;
  greylist::Engine engine(std::move(first));
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([&engine, &errors, t] {
      for (int i = 0; i < 5000; i++) {
        try {
          std::string ip = "10.0." + std::to_string(i % 50) + "." + std::to_string(t);
          engine.check(ip, "s@example.org", "r@example.net", T0 + (i / 2500) * 300);
        } catch (...) {
          errors++;
        }
      }
    });
  }
  for (auto &th : threads) th.join();
  CHECK(errors == 0);
  auto s = engine.stats();
  CHECK(s.checks == 20000 && s.entries == 50);
  return true;
}

static bool test_lists_snapshots_and_reports() {
  greylist::Config config;
  config.key_by_verified_domain(true);
  greylist::Engine engine(config);
  engine.set_list(greylist::List::Clients, {"10.0.0.0/8", ".google.com"});
  CHECK(engine.check("10.1.1.1", "a@x.org", "b@y.net", T0).reason() == greylist::Reason::Whitelisted);
  greylist::ClientInfo google{"mail-a1.google.com", "", ""};
  CHECK(engine.check("203.0.113.1", "a@x.org", "b@y.net", google, T0).reason() ==
        greylist::Reason::Whitelisted);
  try {
    engine.set_list(greylist::List::Senders, {"ok.example", "not ok"}, false);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(std::string(e.what()).rfind("line 2: ", 0) == 0);
  }
  greylist::ClientInfo pool{"", "", "example.com"};
  CHECK(engine.check("203.0.113.5", "a@example.com", "b@y.net", pool, T0).reason() == greylist::Reason::New);
  CHECK(engine.check("198.51.100.7", "a@example.com", "b@y.net", pool, T0 + 300).reason() ==
        greylist::Reason::Retried);
  for (int dt : {0, 4, 9}) engine.check("192.0.2.25", "ceo@corp.example", "a@y.net", T0 + dt);
  engine.sweep(T0 + 3 * 86400);
  auto report = engine.lost_mail_report();
  CHECK(report.size() == 1 && report[0].network == "192.0.2.0/24" && report[0].count == 1);

  char dir[] = "/tmp/greylist-cpp-XXXXXX";
  CHECK(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/g.snap";
  engine.save(path);
  greylist::Config plain;
  try {
    greylist::Engine::load(path, plain);
  } catch (...) {
    CHECK(false);
  }
  greylist::Config other;
  other.prefixes(16, 64);
  try {
    greylist::Engine::load(path, other);
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(e.status() == GREYLIST_STATUS_INCOMPATIBLE);
  }
  auto loaded = greylist::Engine::load(path, plain);
  CHECK(loaded.size() == engine.size());
  CHECK(std::system((std::string("rm -rf ") + dir).c_str()) == 0);
  return true;
}

/* Issue 23: a pool's hosts in other networks share their host names'
 * registrable domain (key_by_host_name, on by default); key() says what
 * keyed the check. */
static bool test_host_name_keys() {
  greylist::ClientInfo first{"mail-sor-f41.google.com", "", ""};
  greylist::ClientInfo retry{"mail-yw1-f5.google.com", "", ""};
  {
    greylist::Engine engine;
    auto v = engine.check("209.85.220.41", "alice@gmail.com", "bob@example.net", first, T0);
    CHECK(v.reason() == greylist::Reason::New && v.key() == greylist::KeyKind::HostDomain);
    v = engine.check("74.125.0.5", "alice@gmail.com", "bob@example.net", retry, T0 + 301);
    CHECK(v.action() == greylist::Action::Pass && v.reason() == greylist::Reason::Retried);
    CHECK(v.key() == greylist::KeyKind::HostDomain && v.delayed() == 301);
    // A generic name, and a bare triplet: the network.
    greylist::ClientInfo dsl{"host-203-0-113-7.dsl.example.net", "", ""};
    CHECK(engine.check("203.0.113.7", "a@x.org", "b@y.net", dsl, T0).key() ==
          greylist::KeyKind::Network);
    CHECK(engine.check("203.0.113.8", "a@x.org", "b@y.net", T0).key() == greylist::KeyKind::Network);
  }
  {
    greylist::Config config;
    config.key_by_host_name(false);
    greylist::Engine engine(config);
    auto v = engine.check("209.85.220.41", "alice@gmail.com", "bob@example.net", first, T0);
    CHECK(v.reason() == greylist::Reason::New && v.key() == greylist::KeyKind::Network);
    v = engine.check("74.125.0.5", "alice@gmail.com", "bob@example.net", retry, T0 + 301);
    CHECK(v.action() == greylist::Action::Defer && v.reason() == greylist::Reason::New);
    CHECK(v.key() == greylist::KeyKind::Network);
  }
  {
    greylist::Config config;
    config.key_by_host_name(false).key_by_verified_domain(true);
    greylist::Engine engine(config);
    greylist::ClientInfo spf{"", "", "gmail.com"};
    CHECK(engine.check("209.85.220.41", "alice@gmail.com", "bob@example.net", spf, T0).key() ==
          greylist::KeyKind::VerifiedDomain);
  }
  return true;
}

/* Redis settings; the engine answers locally when Redis is not there
 * (port 1), or shares triplets through the one tests/run.sh started. */
static bool test_redis() {
  std::string secret = "/tmp/greylist-cpp-secret-" + std::to_string(std::rand());
  std::FILE *f = std::fopen(secret.c_str(), "w");
  CHECK(f != nullptr);
  std::fputs("00112233445566778899aabbccddeeff\n", f);
  std::fclose(f);
  try {
    greylist::Config bad;
    bad.redis("http://example.com/");
    CHECK(false);
  } catch (const greylist::Error &e) {
    CHECK(e.status() == GREYLIST_STATUS_INVALID_ARGUMENT);
  }
  greylist::Config down;
  down.redis("redis://127.0.0.1:1/0").secret_file(secret).redis_timeout_ms(50);
  greylist::Engine local(down);
  auto v = local.check("192.0.2.1", "a@example.org", "b@example.net", T0);
  CHECK(v.action() == greylist::Action::Pass && v.reason() == greylist::Reason::StoreUnavailable);
  if (const char *url = std::getenv("GREYLIST_TEST_REDIS_URL")) {
    greylist::Config shared;
    shared.redis(url).secret_file(secret).redis_prefix("cpp:");
    greylist::Engine mx1(shared), mx2(shared);
    std::string rcpt = "cpp-" + std::to_string(std::rand()) + "@example.net";
    CHECK(mx1.check("192.0.2.1", "a@example.org", rcpt, T0).reason() == greylist::Reason::New);
    CHECK(mx2.check("192.0.2.1", "a@example.org", rcpt, T0 + 301).reason() ==
          greylist::Reason::Retried);
  } else {
    std::printf("  (no GREYLIST_TEST_REDIS_URL: the shared-store part is skipped)\n");
  }
  std::remove(secret.c_str());
  return true;
}

int main() {
  run_test(test_cycle, "cycle");
  run_test(test_config_and_errors, "config_and_errors");
  run_test(test_move_and_threads, "move_and_threads");
  run_test(test_lists_snapshots_and_reports, "lists_snapshots_and_reports");
  run_test(test_blast_copies_and_lost_after, "blast_copies_and_lost_after");
  run_test(test_host_name_keys, "host_name_keys");
  run_test(test_redis, "redis");
  std::printf("%d passed, %d failed\n", runs - failures, failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
