/**
 * A rollback survives the daemon being killed: kill -9 while `snapctl rollback` sets 12,000
 * records back (4,000 small files made since the snapshot, a file rewritten, one removed), at
 * three moments: as soon as the daemon accepted the request (before or during the safety
 * snapshot), while the records are being set back in the background (seen in `snapctl jobs`),
 * and after the command returned. The killed store passes `snapfs check` as it is; after remount
 * a rollback that had begun resumes and finishes by itself. The volume is then either wholly the
 * state before the rollback or wholly the snapshot's (compared capture against capture, access
 * times aside: the reads of the first capture need not be kept by a killed daemon), and the
 * snapshot's whenever the kill came after records were being set back; the snapshot reads as
 * before; besides it there is at most the safety snapshot, ready and holding the state before;
 * and `snapfs check` passes.
 */
import t, { type Test } from 'tap'
import { mkdir, readdir, readFile, readlink, stat, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { isDeepStrictEqual } from 'node:util'
import { ctlJson, ctlOk, listSnapshots, umountAndCheck } from './helpers/ctl.js'
import type { JobInfo } from '../src/api.js'
import { listJobs } from '../dist/src/index.js'
import { errnoOf, mountFresh, run, type Mounted, snapctl, snapfs } from './helpers/mount.js'
import { capture, withoutAtime } from './helpers/tree.js'

t.setTimeout(4 * 60_000)

const snapshotOf = (m: Mounted, name: string): string => join(m.mnt, '.snapshots', name)

/** Whether process `pid` holds a socket on a descriptor not in `before`: a connection it accepted. */
async function newSocket (pid: number, before: string[]): Promise<boolean> {
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    if (before.includes(fd)) continue
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')).startsWith('socket:')) return true
  }
  return false
}

const DIRS = 40
const FILES_PER_DIR = 100

/** 4,000 small files in 40 directories under `root`/many. */
async function manyFiles (root: string): Promise<void> {
  for (let d = 0; d < DIRS; d++) {
    const dir = join(root, 'many', `d${d}`)
    await mkdir(dir, { recursive: true })
    await Promise.all(Array.from({ length: FILES_PER_DIR }, async (_, i) => await writeFile(join(dir, `f${i}`), `file ${d}/${i}\n`)))
  }
}

/** Waits until the daemon has no job left (a resumed rollback has finished). */
async function settled (t: Test, m: Mounted): Promise<void> {
  while ((await ctlJson<JobInfo[]>(t, m, ['jobs'])).length > 0) await sleep(50)
}

/** When to kill the daemon, from the moment it accepts snapctl's connection. */
const MOMENTS = ['at once', 'while records are set back', 'after it returned'] as const

for (const moment of MOMENTS) {
  t.test(`kill -9 ${moment} in a rollback of 4,000 files: the volume is wholly before or wholly the snapshot`, { timeout: 100_000 }, async t => {
    const m = await mountFresh(t)
    await writeFile(join(m.mnt, 'keep'), 'at the snapshot\n')
    await mkdir(join(m.mnt, 'dir'))
    await writeFile(join(m.mnt, 'dir', 'inner'), 'inner at the snapshot\n')
    await ctlOk(t, m, ['create', 's0'])
    const snapshot = withoutAtime(await capture(snapshotOf(m, 's0')))
    await manyFiles(m.mnt)
    await writeFile(join(m.mnt, 'keep'), 'changed after the snapshot\n')
    await unlink(join(m.mnt, 'dir', 'inner'))
    t.equal((await run('sync', [])).code, 0, 'sync: every change is committed before the rollback')
    const before = withoutAtime(await capture(m.mnt))
    t.equal(before['many/d39/f99']?.size, 'file 39/99\n'.length, 'the 4,000 files are there')

    const idle = await readdir(`/proc/${m.pid}/fd`)
    let returned = false
    const rollback = snapctl(['-C', m.mnt, 'rollback', 's0']).finally(() => { returned = true })
    while (!returned && !await newSocket(m.pid, idle)) await sleep(1)
    let applying = false
    if (moment === 'while records are set back') {
      while (!returned && !applying) {
        // Through the package API: a snapctl process per look could miss a short apply.
        const job = (await listJobs(m.mnt)).find(j => j.kind === 'rollback')
        applying = job !== undefined && job.done > 0 && job.done < job.total
      }
      t.ok(applying, 'killed while the rollback was setting records back')
    }
    if (moment === 'after it returned') await rollback
    await m.kill9()
    const answered = await rollback
    t.comment(answered.code === 0 ? `rollback returned before the kill: ${answered.stdout.trim()}` : `rollback cut off: ${answered.stderr.trim()}`)
    const killed = await snapfs(['check', m.store])
    t.equal(killed.code, 0, `the killed store passes check as it is: ${killed.stdout.trim()}`)

    const again = await m.remount()
    await settled(t, again)
    const live = withoutAtime(await capture(again.mnt))
    const state = isDeepStrictEqual(live, before) ? 'the state before' : isDeepStrictEqual(live, snapshot) ? 's0' : 'neither'
    t.comment(`after remount the volume is ${state}`)
    if (state === 'neither') {
      const differing = Object.keys({ ...before, ...live }).filter(path => !isDeepStrictEqual(live[path], before[path]))
      t.comment(`against the state before, ${differing.length} paths differ: ` +
        differing.slice(0, 10).map(path => `${path}: ${JSON.stringify(before[path])} -> ${JSON.stringify(live[path])}`).join('; '))
      t.same(live, snapshot, 'the volume is wholly the state before or wholly s0 (the difference shown: against s0)')
    }
    else t.pass(`the volume is wholly ${state}`)
    if (answered.code === 0 || applying) t.equal(state, 's0', 'a rollback that was setting records back, or had returned, is carried through')
    t.same(withoutAtime(await capture(snapshotOf(again, 's0'))), snapshot, 's0 reads as before')
    const others = (await listSnapshots(t, again)).filter(s => s.name !== 's0')
    t.ok(others.length <= 1 && others.every(s => s.status === 'ready' && s.name.startsWith('s0.before-rollback.')),
      `besides s0 at most the safety snapshot, ready (${others.map(s => `${s.name} ${s.status}`).join(', ')})`)
    for (const s of others) {
      const safety = snapshotOf(again, s.name)
      t.equal(await readFile(join(safety, 'keep'), 'utf8'), 'changed after the snapshot\n', 'the safety snapshot holds the state before: the rewritten file')
      t.equal(await errnoOf(() => stat(join(safety, 'dir', 'inner'))), 'ENOENT', 'without the removed one')
      t.equal((await readdir(join(safety, 'many'))).length, DIRS, 'with every new directory')
      t.equal((await readdir(join(safety, 'many', `d${DIRS - 1}`))).length, FILES_PER_DIR, 'down to the last one\'s files')
    }
    await umountAndCheck(t, again)
  })
}
