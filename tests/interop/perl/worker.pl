#!/usr/bin/perl
# Usage: worker.pl HOST:PORT FUNC MODE COUNT
# MODE: rev (reverse the workload), echo, upper, fail (return undef -> WORK_FAIL).
# Exits after COUNT jobs.
use strict;
use warnings;
use Gearman::Worker;

my ($server, $func, $mode, $count) = @ARGV;
$| = 1;
my $worker = Gearman::Worker->new(job_servers => [$server]);
my $done = 0;
$worker->register_function($func => sub {
    my $job = shift;
    my $arg = $job->arg;
    $done++;
    return scalar reverse($arg) if $mode eq "rev";
    return uc($arg) if $mode eq "upper";
    return undef if $mode eq "fail";
    return $arg;
});
print "ready\n";
$worker->work(stop_if => sub { $done >= $count });
exit 0;
