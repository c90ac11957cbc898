<?php
/**
 * The module's unit tests under php-cli, against the stand-in base class: `php module_test.php`
 * runs every test_* function, prints one line per test and exits 1 if any failed. Each test
 * builds the daemon's files (suspended.txt, fingerprint.key) in a temporary directory, as
 * monitor-daemon/src/actions/publish.rs writes them.
 */

require __DIR__ . '/AbstractExternalModule.php';
require __DIR__ . '/../redcap_monitor_v1.0.0/ApiPolicyModule.php';

use RedcapMonitor\ApiPolicyModule\ApiPolicyModule;
use RedcapMonitor\ApiPolicyModule\SuspensionList;

date_default_timezone_set('UTC');

const TOKEN = '0123456789ABCDEF0123456789ABCDEF';
const OTHER = 'FEDCBA9876543210FEDCBA9876543210';

function check($condition, $what)
{
    if (!$condition) {
        throw new Exception($what);
    }
}

function same($expected, $actual, $what)
{
    check($expected === $actual, "$what: expected " . var_export($expected, true) . ', got ' . var_export($actual, true));
}

/** A directory with the daemon's key and a list of [token, until, reason] lines. */
function published(array $suspended, $key = null)
{
    $dir = sys_get_temp_dir() . '/rcm-module-' . bin2hex(random_bytes(6));
    mkdir($dir, 0700);
    $GLOBALS['DIRS'][] = $dir;
    $key = $key === null ? str_repeat("\x07", 32) : $key;
    file_put_contents("$dir/fingerprint.key", $key);
    $text = SuspensionList::HEADER . "\n# written " . time() . " by the daemon\n";
    foreach ($suspended as [$token, $until, $reason]) {
        $fp = SuspensionList::fingerprint($key, strtoupper($token));
        $text .= "$fp " . ($until === null ? '-' : $until) . " $reason\n";
    }
    file_put_contents("$dir/suspended.txt", $text);
    return $dir;
}

function module(array $settings)
{
    $GLOBALS['STANDIN_SETTINGS'] = $settings;
    return new ApiPolicyModule();
}

function test_the_fingerprint_is_the_daemons_hmac_of_the_upper_cased_token()
{
    // The same vector as token.rs's fingerprint_matches_hmac_of_upper_cased_token: key 32 x 0x01.
    $key = str_repeat("\x01", 32);
    $expected = substr(hash_hmac('sha256', 'ABCDEF0123', $key), 0, 16);
    same($expected, SuspensionList::fingerprint($key, SuspensionList::normalise('abcdef0123')), 'fingerprint');
    same(SuspensionList::normalise("abc\n"), 'ABC', 'a final line feed is dropped like REDCap\'s $ lets it');
    foreach (['', "abc\n\n", 'ab c', 'ab-c', "ab\0", str_repeat('A', 129), ['x'], null, 12] as $bad) {
        same(null, SuspensionList::normalise($bad), 'malformed ' . var_export($bad, true));
    }
    same(str_repeat('A', 128), SuspensionList::normalise(str_repeat('a', 128)), 'the longest token');
}

function test_a_suspended_token_is_refused_with_until_why_and_whom_to_contact()
{
    $until = time() + 3600;
    $dir = published([[TOKEN, $until, 'broke heavy (2 calls in 300 s, limit 1)']]);
    $module = module(['list-dir' => $dir, 'contact' => 'redcap-help@example.org']);
    $message = $module->redcap_module_api_before(12, ['token' => strtolower(TOKEN), 'content' => 'record']);
    check(is_string($message), 'a suspended token is refused');
    check(strpos($message, 'suspended by the API policy') !== false, "says suspended by the API policy: $message");
    check(strpos($message, 'until ' . date('Y-m-d H:i:s T', $until)) !== false, "says until when: $message");
    check(strpos($message, 'broke heavy (2 calls in 300 s, limit 1)') !== false, "says why: $message");
    check(strpos($message, 'redcap-help@example.org') !== false, "says whom to contact: $message");
    check(strpos(strtoupper($message), TOKEN) === false, 'never repeats the token');
    same(null, $module->redcap_module_api_before(12, ['token' => OTHER]), 'another token passes');
    same([], $module->logs, 'nothing logged for a readable list');
}

function test_a_suspension_until_lifted_and_the_default_contact_are_said()
{
    $dir = published([[TOKEN, null, 'by hand']]);
    $message = module(['list-dir' => $dir])->redcap_module_api_before(1, ['token' => TOKEN]);
    check(strpos($message, 'until an administrator lifts it') !== false, $message);
    check(strpos($message, 'your REDCap administrators') !== false, $message);
}

function test_an_ended_suspension_and_a_malformed_or_missing_token_pass()
{
    $dir = published([[TOKEN, time() - 1, 'over']]);
    $module = module(['list-dir' => $dir, 'when-unavailable' => 'closed']);
    same(null, $module->redcap_module_api_before(1, ['token' => TOKEN]), 'ended');
    same(null, $module->redcap_module_api_before(1, []), 'no token: REDCap refuses it itself');
    same(null, $module->redcap_module_api_before(1, ['token' => ['x']]), 'an array');
    same(null, $module->redcap_module_api_before(1, null), 'no post at all');
}

function test_a_missing_list_fails_open_by_default_and_is_logged_once()
{
    $dir = sys_get_temp_dir() . '/rcm-none-' . bin2hex(random_bytes(6));
    $module = module(['list-dir' => $dir]);
    same(null, $module->redcap_module_api_before(1, ['token' => TOKEN]), 'fail open');
    same(null, $module->redcap_module_api_before(1, ['token' => TOKEN]), 'fail open again');
    same(1, count($module->logs), 'logged once within 10 minutes');
    same('missing', $module->logs[0][1]['list_state'], 'the log says why');
    check(strpos($module->logs[0][0], 'fail open') !== false, $module->logs[0][0]);
    check(strpos(json_encode($module->logs), TOKEN) === false, 'the log never holds the token');
}

function test_a_stale_list_fails_closed_when_configured()
{
    $dir = published([]);
    touch("$dir/suspended.txt", time() - 30);
    $module = module(['list-dir' => $dir, 'when-unavailable' => 'closed', 'stale-after' => '10', 'contact' => 'ops']);
    $message = $module->redcap_module_api_before(1, ['token' => TOKEN]);
    check(is_string($message) && strpos($message, 'stale') !== false && strpos($message, 'ops') !== false, "refused: $message");
    same('stale', $module->logs[0][1]['list_state'], 'logged');
    // A longer stale-after accepts the same list.
    $module = module(['list-dir' => $dir, 'when-unavailable' => 'closed', 'stale-after' => '60']);
    same(null, $module->redcap_module_api_before(1, ['token' => TOKEN]), 'fresh enough');
}

function test_a_list_of_another_format_or_an_unreadable_key_is_unavailable()
{
    $dir = published([[TOKEN, null, 'x']]);
    file_put_contents("$dir/suspended.txt", "# something else\n");
    same('unreadable', SuspensionList::lookup($dir, TOKEN, time(), 10)['state'], 'another format');
    $dir = published([[TOKEN, null, 'x']]);
    file_put_contents("$dir/fingerprint.key", 'short');
    same('unreadable', SuspensionList::lookup($dir, TOKEN, time(), 10)['state'], 'a short key');
    $message = module(['list-dir' => $dir, 'when-unavailable' => 'closed'])->redcap_module_api_before(1, ['token' => TOKEN]);
    check(is_string($message), 'fail closed refuses');
}

function test_a_token_whose_fingerprint_only_starts_a_line_elsewhere_is_not_matched()
{
    // The lookup anchors on a line start and the space after the fingerprint.
    $key = str_repeat("\x07", 32);
    $fp = SuspensionList::fingerprint($key, TOKEN);
    $dir = published([]);
    file_put_contents(
        "$dir/suspended.txt",
        SuspensionList::HEADER . "\n# written\n" . substr($fp, 0, 15) . "0 - other\nxx$fp - shifted\n"
    );
    same('clear', SuspensionList::lookup($dir, TOKEN, time(), 10)['state'], 'no false match');
}

function test_many_suspensions_are_looked_up_by_fingerprint()
{
    $rows = [];
    for ($i = 0; $i < 2000; $i++) {
        $rows[] = [sprintf('T%031d', $i), null, "reason $i"];
    }
    $dir = published($rows);
    $found = SuspensionList::lookup($dir, sprintf('t%031d', 1234), time(), 10);
    same('suspended', $found['state'], 'found');
    same('reason 1234', $found['reason'], 'its own line');
    same('clear', SuspensionList::lookup($dir, sprintf('T%031d', 2000), time(), 10)['state'], 'absent');
    // Indicative cost per call (not asserted: figures belong in the README, not in tests).
    $n = 2000;
    $start = hrtime(true);
    for ($i = 0; $i < $n; $i++) {
        SuspensionList::lookup($dir, sprintf('T%031d', $i), time(), 10);
    }
    $GLOBALS['FIGURES'][] = sprintf('lookup in a list of 2000: %.1f us per call', (hrtime(true) - $start) / $n / 1000);
    $dir = published([[TOKEN, null, 'x'], [OTHER, null, 'y']]);
    $start = hrtime(true);
    for ($i = 0; $i < $n; $i++) {
        SuspensionList::lookup($dir, sprintf('T%031d', $i), time(), 10);
    }
    $GLOBALS['FIGURES'][] = sprintf('lookup in a list of 2: %.1f us per call', (hrtime(true) - $start) / $n / 1000);
}

$failed = 0;
foreach (get_defined_functions()['user'] as $function) {
    if (strpos($function, 'test_') !== 0) {
        continue;
    }
    try {
        $function();
        echo "ok   $function\n";
    } catch (Throwable $e) {
        $failed++;
        echo "FAIL $function: " . $e->getMessage() . "\n";
    }
}
foreach ($GLOBALS['DIRS'] ?? [] as $dir) {
    array_map('unlink', glob("$dir/*"));
    rmdir($dir);
}
foreach ($GLOBALS['FIGURES'] ?? [] as $figure) {
    echo "note $figure\n";
}
echo $failed === 0 ? "all passed\n" : "$failed failed\n";
exit($failed === 0 ? 0 : 1);
