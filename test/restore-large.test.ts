/**
 * Restoring a large tree (2,000 files in 20 directories, hard links across them): it runs in
 * steps whose progress `snapctl jobs` shows, under a temporary name that only becomes the target
 * once the tree is complete, and gives exactly the snapshot's tree. Killed with kill -9 half-way,
 * the store passes `snapfs check` as it is (which names the partial tree), and the next mount
 * removes the partial tree by itself: the target never appears, and the earlier restore is intact.
 */
import t from 'tap'
import { link, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { JobInfo } from '../src/api.js'
import { listJobs } from '../dist/src/index.js'
import { ctlOk, umountAndCheck } from './helpers/ctl.js'
import { errnoOf, mountFresh, run, snapctl, snapfs, type Mounted } from './helpers/mount.js'
import { capture, withoutAtime } from './helpers/tree.js'

t.setTimeout(4 * 60_000)

const DIRS = 20
const FILES_PER_DIR = 100

/** The daemon's jobs, through the package API: quicker than a snapctl process, to catch a restore half-way. */
async function jobsOf (m: Mounted): Promise<JobInfo[]> {
  return await listJobs(m.mnt)
}

/** Names in the root that a restore left under its temporary name. */
async function temporaryNames (m: Mounted): Promise<string[]> {
  return (await readdir(m.mnt)).filter(name => name.startsWith('.snapfs-restore-'))
}

t.test('a large tree is restored in steps with progress; killed half-way, the next mount removes the partial tree', { timeout: 200_000 }, async t => {
  const m = await mountFresh(t)
  for (let d = 0; d < DIRS; d++) {
    const dir = join(m.mnt, 'tree', `d${d}`)
    await mkdir(dir, { recursive: true })
    await Promise.all(Array.from({ length: FILES_PER_DIR }, async (_, i) => await writeFile(join(dir, `f${i}`), `file ${d}/${i}\n`)))
  }
  await link(join(m.mnt, 'tree', 'd0', 'f0'), join(m.mnt, 'tree', `d${DIRS - 1}`, 'second-name'))
  await ctlOk(t, m, ['create', 's0'])
  const snapshot = withoutAtime(await capture(join(m.mnt, '.snapshots', 's0', 'tree')))
  await rm(join(m.mnt, 'tree'), { recursive: true })

  const restoring = snapctl(['-C', m.mnt, 'restore', '--to', join(m.mnt, 'copy'), 's0', join(m.mnt, 'tree')])
  let seen: JobInfo | undefined
  let returned = false
  void restoring.finally(() => { returned = true })
  while (!returned && seen === undefined) {
    seen = (await jobsOf(m)).find(j => j.kind === 'restore' && j.done > 0 && j.done < j.total)
    if (seen === undefined) continue
    // One listing, so that the restore finishing in between cannot show both or neither.
    const names = await readdir(m.mnt)
    const partial = names.filter(name => name.startsWith('.snapfs-restore-')).length
    t.same({ partial, target: names.includes('copy') }, names.includes('copy') ? { partial: 0, target: true } : { partial: 1, target: false },
      'the partial tree has a temporary name; the target appears, in its place, only once the tree is complete')
  }
  const result = await restoring
  t.equal(result.code, 0, result.stderr)
  t.ok(seen !== undefined, `progress was shown: ${seen === undefined ? 'none' : `${seen.done} of ${seen.total} (${seen.target})`}`)
  t.equal(seen?.total, DIRS * (FILES_PER_DIR + 1) + 2, 'the total counts every name of the tree')
  t.same(withoutAtime(await capture(join(m.mnt, 'copy'))), snapshot, 'the restored tree is the snapshot\'s')
  t.same(await temporaryNames(m), [], 'no temporary name is left')

  const again = snapctl(['-C', m.mnt, 'restore', '--to', join(m.mnt, 'copy2'), 's0', join(m.mnt, 'tree')])
  let cut = false
  returned = false
  void again.finally(() => { returned = true })
  while (!returned && !cut) cut = (await jobsOf(m)).some(j => j.kind === 'restore' && j.done > 0 && j.done < j.total)
  await m.kill9()
  await again
  t.ok(cut, 'killed half-way through the second restore')
  const killed = await snapfs(['check', m.store])
  t.equal(killed.code, 0, 'the killed store passes check as it is')
  t.match(killed.stdout, /unfinished: volume main: a restore stopped half-way left \.snapfs-restore-/, 'check names the partial tree')

  const remounted = await m.remount()
  while ((await temporaryNames(remounted)).length > 0) await sleep(50)
  t.equal(await errnoOf(() => stat(join(remounted.mnt, 'copy2'))), 'ENOENT', 'the interrupted restore\'s target never appeared')
  t.same(withoutAtime(await capture(join(remounted.mnt, 'copy'))), snapshot, 'the first restore is intact')
  t.same(await jobsOf(remounted), [], 'no job is left')
  t.equal((await run('sync', [])).code, 0)
  await umountAndCheck(t, remounted)
})
