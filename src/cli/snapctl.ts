#!/usr/bin/env node
/**
 * `snapctl`: snapshots of a mounted snapfs volume — create, list, show, delete, quotas. It acts
 * on the mount that holds the current directory, or the one named with -C, through the daemon's
 * control socket (src/api.ts does the talking). Human output by default, --json for scripts.
 */
import path from 'node:path'
import { Command } from 'commander'
import { UserError } from '../errors.js'
import { cloneSnapshot, createSnapshot, deleteSnapshot, diffSnapshots, listJobs, listSnapshots, mountStatus, restoreFromSnapshot, rollbackToSnapshot, showSnapshot, snapshotQuota, type JobInfo, type QuotaChange, type SnapshotInfo } from '../api.js'
import { snapfsMountHolding } from '../daemon/mounts.js'
import { formatBytes, formatTable, parseSize, runAction } from './common.js'

/** Progress of a long operation is shown on a terminal once it has run this long. */
const PROGRESS_AFTER_MS = 1000
const PROGRESS_EVERY_MS = 250

const program = new Command('snapctl')
  .description('Snapshots of a mounted snapfs volume.\n\n' +
    'Typical use, inside the mount:\n' +
    '  snapctl create before-upgrade     freeze the volume as it is now (instant)\n' +
    '  ls .snapshots/before-upgrade      browse it, read-only\n' +
    '  snapctl list                      what each snapshot holds on to\n' +
    '  snapctl diff before-upgrade       what changed since\n' +
    '  snapctl delete before-upgrade     free what only it holds')
  .option('-C, --mount <path>', 'the mount to act on (default: the snapfs mount holding the current directory)')
  .showHelpAfterError()

/** The mount the command acts on. */
function mountOf (): string {
  const given = program.opts<{ mount?: string }>().mount
  const mnt = snapfsMountHolding(given ?? process.cwd())
  if (mnt === undefined) {
    throw new UserError(given === undefined
      ? 'the current directory is not inside a snapfs mount (use -C MOUNTPOINT)'
      : `${given} is not inside a snapfs mount`)
  }
  return mnt
}

function print (json: boolean | undefined, value: unknown, human: () => string): void {
  process.stdout.write(json === true ? JSON.stringify(value, null, 2) + '\n' : human())
}

program.command('create')
  .description('snapshot the volume: every write acknowledged before this command is in it')
  .argument('<name>', 'the snapshot\'s name (shown as .snapshots/NAME)')
  .option('-d, --description <text>', 'a note kept with the snapshot', '')
  .option('--json', 'machine-readable output')
  .action(async (name: string, opts: { description: string, json?: boolean }) => runAction('snapctl', async () => {
    const created = await createSnapshot(mountOf(), name, { description: opts.description })
    print(opts.json, created, () => `created snapshot ${created.name} (id ${created.id}) at ${new Date(created.created).toISOString()} in ${created.elapsedMs} ms\n`)
  }))

program.command('list')
  .alias('ls')
  .description('list the snapshots: USED is what deleting one frees, REFER the data it holds, WRITTEN what is new since the one before')
  .option('--json', 'machine-readable output')
  .action(async (opts: { json?: boolean }) => runAction('snapctl', async () => {
    const list = await listSnapshots(mountOf())
    print(opts.json, list, () => table(list))
  }))

program.command('show')
  .description('one snapshot in detail')
  .argument('<name>')
  .option('--json', 'machine-readable output')
  .action(async (name: string, opts: { json?: boolean }) => runAction('snapctl', async () => {
    const info = await showSnapshot(mountOf(), name)
    print(opts.json, info, () => details(info))
  }))

program.command('delete')
  .alias('rm')
  .description('delete a snapshot: it leaves .snapshots at once; the blocks only it holds are freed in the background')
  .argument('<name>')
  .option('--no-wait', 'return once the snapshot is hidden, without waiting for its blocks to be freed')
  .option('--json', 'machine-readable output')
  .action(async (name: string, opts: { wait: boolean, json?: boolean }) => runAction('snapctl', async () => {
    const mnt = mountOf()
    const deleting = deleteSnapshot(mnt, name, { wait: opts.wait })
    const stopProgress = opts.wait ? showProgress(mnt, 'delete', name) : () => {}
    try {
      const result = await deleting
      print(opts.json, result, () => opts.wait
        ? `deleted snapshot ${name} (freed ${formatBytes(result.freed)})\n`
        : `deleting snapshot ${name} in the background\n`)
    } finally {
      stopProgress()
    }
  }))

program.command('diff')
  .description('what changed from snapshot A to snapshot B, or to the live volume: + added, - removed, M modified, R renamed (as zfs diff)')
  .argument('<a>', 'the older snapshot')
  .argument('[b]', 'the newer snapshot (default: the live volume)')
  .option('--json', 'machine-readable output (paths relative to the mount)')
  .action(async (a: string, b: string | undefined, opts: { json?: boolean }) => runAction('snapctl', async () => {
    const mnt = mountOf()
    const entries = await diffSnapshots(mnt, a, b)
    const full = (p: string): string => path.join(mnt, p)
    print(opts.json, entries, () => entries.map(e => e.change === 'R'
      ? `R\t${full(e.path)} -> ${full(e.to ?? '')}\n`
      : `${e.change}\t${full(e.path)}\n`).join(''))
  }))

program.command('rollback')
  .description('make the volume exactly what a snapshot holds; every snapshot stays, and a safety snapshot of the state before is taken')
  .argument('<name>', 'the snapshot')
  .option('--dry-run', 'list what would change, change nothing')
  .option('--no-safety-snapshot', 'do not snapshot the state before the rollback')
  .option('--force', 'roll back even with files open on the mount (their descriptors then fail with ESTALE)')
  .option('--no-wait', 'return once the volume reads as the snapshot; the changed records are set back in the background (snapctl jobs)')
  .option('--json', 'machine-readable output')
  .action(async (name: string, opts: { dryRun?: boolean, safetySnapshot: boolean, force?: boolean, wait: boolean, json?: boolean }) => runAction('snapctl', async () => {
    const mnt = mountOf()
    const rolling = rollbackToSnapshot(mnt, name, { dryRun: opts.dryRun === true, safetySnapshot: opts.safetySnapshot, force: opts.force === true, wait: opts.wait })
    const stopProgress = opts.wait && opts.dryRun !== true ? showProgress(mnt, 'rollback', name) : () => {}
    let result
    try {
      result = await rolling
    } finally {
      stopProgress()
    }
    const done = result.done ? `${result.records} records set back` : `${result.records} records being set back in the background`
    print(opts.json, result, () => opts.dryRun === true
      ? result.changes.map(e => e.change === 'R' ? `R\t${path.join(mnt, e.to ?? '')} -> ${path.join(mnt, e.path)}\n` : `${undo(e.change)}\t${path.join(mnt, e.path)}\n`).join('')
      : `rolled back to ${name}: ${done} in ${result.elapsedMs} ms` +
        (result.safetySnapshot === null ? '' : `; the state before is snapshot ${result.safetySnapshot}`) + '\n')
  }))

program.command('status')
  .description('the daemon serving the mount: store, volume, transport, page cache, what the kernel sends')
  .option('--json', 'machine-readable output')
  .action(async (opts: { json?: boolean }) => runAction('snapctl', async () => {
    const status = await mountStatus(mountOf())
    const lines: Array<[string, string]> = [
      ['mount', status.mountpoint], ['store', status.store], ['volume', status.volume], ['daemon pid', String(status.pid)],
      ['transport', status.transport], ['page cache', `${formatBytes(status.residentBytes)} of ${formatBytes(status.cacheBytes)}, ${formatBytes(status.dirtyBytes)} dirty`]
    ]
    if (status.largestWrite !== undefined) lines.push(['largest write', formatBytes(status.largestWrite)])
    if (status.largestRead !== undefined) lines.push(['largest read', formatBytes(status.largestRead)])
    if (status.kernelNodes !== undefined) lines.push(['kernel inodes', String(status.kernelNodes)])
    print(opts.json, status, () => lines.map(([key, value]) => `${key}: ${value}\n`).join(''))
  }))

program.command('jobs')
  .description('the long operations running in the background (rollbacks, deletes, clones, restores) and their progress')
  .option('--json', 'machine-readable output')
  .action(async (opts: { json?: boolean }) => runAction('snapctl', async () => {
    const jobs = await listJobs(mountOf())
    print(opts.json, jobs, () => jobs.length === 0
      ? 'no jobs running\n'
      : formatTable([['JOB', 'TARGET', 'PROGRESS', 'LEFT'], ...jobs.map(j => [j.kind, j.target, progressOf(j), timeLeft(j)])]))
  }))

/** What a rollback does to a path that `diff NAME` reports with `change`. */
function undo (change: string): string {
  return change === '+' ? '-' : change === '-' ? '+' : change
}

program.command('restore')
  .description('bring a file or directory tree back from a snapshot, sharing its blocks (a file in the way is replaced)')
  .argument('<name>', 'the snapshot')
  .argument('<path>', 'what to restore: its path in the mount (relative to the current directory, or absolute)')
  .option('--to <dest>', 'where to put it instead of its old place')
  .option('--json', 'machine-readable output')
  .action(async (name: string, target: string, opts: { to?: string, json?: boolean }) => runAction('snapctl', async () => {
    const mnt = mountOf()
    const from = inMount(mnt, target)
    const to = opts.to === undefined ? undefined : inMount(mnt, opts.to)
    const restoring = restoreFromSnapshot(mnt, name, from, { to })
    const stopProgress = showProgress(mnt, 'restore', to ?? from)
    let result
    try {
      result = await restoring
    } finally {
      stopProgress()
    }
    print(opts.json, result, () => `restored ${path.join(mnt, from)} from ${name} to ${path.join(mnt, result.path)} ` +
      `(${result.inodes} inodes, ${result.links} extra links, ${formatBytes(result.bytes)} shared, no data copied)\n`)
  }))

/** `target` as a path from the mount's root ("/a/b"); a path outside the mount is a UserError. */
function inMount (mnt: string, target: string): string {
  const relative = path.relative(mnt, path.resolve(target))
  if (relative.startsWith('..') || path.isAbsolute(relative)) throw new UserError(`${target} is not inside the mount ${mnt}`)
  return '/' + relative
}

program.command('clone')
  .description('create a new volume in the same store that starts as the snapshot\'s content, sharing its blocks')
  .argument('<name>', 'the snapshot')
  .argument('<volume>', 'the new volume\'s name (mount it with: snapfs mount STORE --volume VOLUME DIR)')
  .option('--no-wait', 'return before the copy of its records is done')
  .option('--json', 'machine-readable output')
  .action(async (name: string, volume: string, opts: { wait: boolean, json?: boolean }) => runAction('snapctl', async () => {
    const result = await cloneSnapshot(mountOf(), name, volume, { wait: opts.wait })
    print(opts.json, result, () => opts.wait
      ? `created volume ${volume} from snapshot ${name} (${result.records} inodes, every block shared)\n`
      : `creating volume ${volume} from snapshot ${name} in the background\n`)
  }))

program.command('quota')
  .description('show or set the volume\'s snapshot quotas (a count, and the space snapshots may hold)')
  .option('--max-count <n>', 'most snapshots the volume may have ("none" for no limit)')
  .option('--max-size <size>', 'most space snapshots may hold before a new one is refused, e.g. 10G ("none" for no limit)')
  .option('--json', 'machine-readable output')
  .action(async (opts: { maxCount?: string, maxSize?: string, json?: boolean }) => runAction('snapctl', async () => {
    const change: QuotaChange = {}
    if (opts.maxCount !== undefined) change.maxCount = limit(opts.maxCount, text => parseCount(text))
    if (opts.maxSize !== undefined) change.maxBytes = limit(opts.maxSize, parseSize)
    const quota = await snapshotQuota(mountOf(), change)
    print(opts.json, quota, () =>
      `snapshots      ${quota.count}${quota.maxCount === null ? '' : ` of at most ${quota.maxCount}`}\n` +
      `space held     ${formatBytes(quota.bytes)}${quota.maxBytes === null ? '' : ` (new snapshots refused from ${formatBytes(quota.maxBytes)})`}\n`)
  }))

function limit (text: string, parse: (text: string) => number): number | null {
  return text === 'none' ? null : parse(text)
}

function parseCount (text: string): number {
  if (!/^\d+$/.test(text)) throw new UserError(`invalid count "${text}" (a whole number, or "none")`)
  return Number(text)
}

function table (list: SnapshotInfo[]): string {
  const rows = [['NAME', 'CREATED', 'USED', 'REFER', 'WRITTEN', 'STATUS']]
  for (const s of list) {
    const status = s.progress === undefined ? s.status : `${s.status} ${percent(s.progress)}`
    rows.push([s.name, localTime(s.created), formatBytes(s.used), formatBytes(s.refer), formatBytes(s.written), status])
  }
  return formatTable(rows)
}

function details (s: SnapshotInfo): string {
  const lines: Array<[string, string]> = [
    ['name', s.name], ['id', String(s.id)], ['created', new Date(s.created).toISOString()], ['status', s.status],
    ['used', formatBytes(s.used)], ['refer', formatBytes(s.refer)], ['written', formatBytes(s.written)], ['generation', String(s.gen)]
  ]
  if (s.description.length > 0) lines.push(['description', s.description])
  if (s.progress !== undefined) lines.push(['progress', percent(s.progress)])
  return lines.map(([key, value]) => `${key}: ${value}\n`).join('')
}

function percent (progress: { done: number, total: number }): string {
  return progress.total === 0 ? '0 %' : `${Math.min(100, Math.floor(100 * progress.done / progress.total))} %`
}

function localTime (ms: number): string {
  const d = new Date(ms)
  const pad = (n: number): string => String(n).padStart(2, '0')
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}

function progressOf (job: JobInfo): string {
  return job.total === 0 ? (job.done === 0 ? 'starting' : String(job.done)) : `${percent(job)} (${job.done} of ${job.total})`
}

function timeLeft (job: JobInfo): string {
  return job.secondsLeft === null ? '-' : `about ${job.secondsLeft} s`
}

/**
 * On a terminal, shows the progress of the `kind` job on `target` and its time left on stderr,
 * from its second second on, until the returned function is called.
 */
function showProgress (mnt: string, kind: JobInfo['kind'], target: string): () => void {
  if (process.stderr.isTTY !== true) return () => {}
  const started = Date.now()
  let shown = false
  const timer = setInterval(() => {
    if (Date.now() - started < PROGRESS_AFTER_MS) return
    listJobs(mnt).then(jobs => {
      const job = jobs.find(j => j.kind === kind && j.target === target)
      if (job === undefined) return
      process.stderr.write(`\r${kind} ${target}: ${progressOf(job)}, ${job.secondsLeft === null ? 'time left unknown' : `about ${job.secondsLeft} s left`}   `)
      shown = true
    }, () => {})
  }, PROGRESS_EVERY_MS)
  return () => {
    clearInterval(timer)
    if (shown) process.stderr.write('\n')
  }
}

await program.parseAsync()
