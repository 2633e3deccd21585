from pausesvc.cli import main

main()
