/**
 * One daemon per volume: a lock file in the store names the pid that serves each mounted volume.
 * A lock whose process is gone is stale and taken over.
 */
import fs from 'node:fs'
import path from 'node:path'
import { UserError } from '../errors.js'

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Takes the volume's lock; returns the function that releases it. */
export function acquireVolumeLock (storeDir: string, volume: string): () => void {
  const file = path.join(storeDir, `volume-${volume}.lock`)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 })
      return () => fs.rmSync(file, { force: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = parseInt(fs.readFileSync(file, 'utf8'), 10)
      if (Number.isInteger(pid) && pid !== process.pid && alive(pid)) {
        throw new UserError(`volume ${volume} of ${storeDir} is already mounted by process ${pid}`)
      }
      fs.rmSync(file, { force: true })
    }
  }
  throw new UserError(`cannot lock volume ${volume} of ${storeDir}`)
}
