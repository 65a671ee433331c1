<?php
// Usage: client.php HOST:PORT FUNC DATA [fg|high|bg] [UNIQUE]
// fg/high: prints the job's result (raw bytes); exits 1 if the job failed.
// bg: prints the job handle and a newline.
[, $server, $func, $data] = $argv;
$mode = $argv[4] ?? "fg";
$unique = ($argv[5] ?? "") === "" ? null : $argv[5];
[$host, $port] = explode(":", $server);
$client = new GearmanClient();
$client->addServer($host, (int)$port);
$client->setTimeout(30000);
if ($mode === "bg") {
    $handle = $client->doBackground($func, $data, $unique);
    if ($client->returnCode() !== GEARMAN_SUCCESS) {
        fwrite(STDERR, "doBackground failed: " . $client->error() . "\n");
        exit(1);
    }
    echo $handle, "\n";
    exit(0);
}
$result = $mode === "high" ? $client->doHigh($func, $data, $unique)
                           : $client->doNormal($func, $data, $unique);
if ($client->returnCode() !== GEARMAN_SUCCESS) {
    fwrite(STDERR, "job failed: " . $client->returnCode() . " " . $client->error() . "\n");
    exit(1);
}
echo $result;
