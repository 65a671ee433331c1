<?php
// A php-gearman (libgearman) worker: FUNC returns the workload reversed, FUNC-bg returns nothing.
// Usage: php big_worker.php HOST PORT FUNC
[$_, $host, $port, $func] = $argv;
$w = new GearmanWorker();
$w->addServer($host, (int)$port);
$w->addFunction($func, function ($job) { return strrev($job->workload()); });
$w->addFunction($func . "-bg", function ($job) { return ""; });
fwrite(STDOUT, "ready\n");
fflush(STDOUT);
while ($w->work()) {
    if ($w->returnCode() != GEARMAN_SUCCESS) {
        fwrite(STDERR, "worker: " . $w->error() . "\n");
        exit(1);
    }
}
