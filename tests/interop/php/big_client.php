<?php
// The sequence of issue 7 on one php-gearman (libgearman) connection, ROUNDS times: a 16 MiB
// echo, a 16 MiB background job, then a doHigh of 16 MiB + 4 bytes, each within TIMEOUT_MS (the
// client's own timeout, as a PHP application sets it). Prints one line per step.
// Usage: php big_client.php HOST PORT FUNC ROUNDS TIMEOUT_MS
[$_, $host, $port, $func, $rounds, $timeout] = $argv;
$c = new GearmanClient();
$c->addServer($host, (int)$port);
$c->setTimeout((int)$timeout);
$mib16 = 16 * 1024 * 1024;
for ($i = 0; $i < (int)$rounds; $i++) {
    $echo = str_repeat("e", $mib16);
    $ok = $c->ping($echo);
    echo "round $i echo " . ($ok ? "ok" : "failed: " . $c->error()) . "\n";
    $c->doBackground($func . "-bg", str_repeat("b", $mib16));
    echo "round $i background " . ($c->returnCode() == GEARMAN_SUCCESS ? "ok" : "failed: " . $c->error()) . "\n";
    $payload = sprintf("%08d", $i) . str_repeat("y", $mib16 - 8) . "abcd";
    $result = $c->doHigh($func, $payload);
    if ($c->returnCode() == GEARMAN_SUCCESS && $result === strrev($payload)) {
        echo "round $i high ok\n";
    } else {
        echo "round $i high failed: " . $c->returnCode() . " " . $c->error() . " (" . strlen((string)$result) . " bytes)\n";
    }
}
