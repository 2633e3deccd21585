from bench._run import main

main()
